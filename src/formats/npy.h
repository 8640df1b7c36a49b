// NumPy .npy files: declared in the public include/perceiver/io.h, implemented in npy.cpp.
#pragma once

#include "perceiver/io.h"
