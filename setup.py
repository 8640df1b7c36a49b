"""Builds the extension module perceiver*.so with CMake for `pip install --no-build-isolation .` (see pyproject.toml)."""
import os
import pathlib
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = pathlib.Path(self.build_temp).resolve() / "cmake"
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                        f"-DPython_EXECUTABLE={sys.executable}", "-DPERCEIVER_BUILD_TESTS=OFF",
                        "-DPERCEIVER_BUILD_BENCH=OFF", "-DPERCEIVER_BUILD_SHARED=OFF"], check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build), "--target", "perceiver_python", "-j", jobs], check=True)
        built = next((build / "python").glob("perceiver*.so"))
        target = pathlib.Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(built), str(target))


setup(ext_modules=[Extension("perceiver", sources=[])], cmdclass={"build_ext": CMakeBuild})
