// The architectures this engine runs, by config.json "architectures"[0] (HF's class names), and the modules
// each is made of. A new Perceiver IO model is one more line here plus its new module files.
#include "model/modules.h"
#include "formats/tensor_file.h"

namespace perceiver {
namespace {

const ArchitectureEntry kArchitectures[] = {
    {"PerceiverForImageClassificationConvProcessing", make_conv_image_preprocessor, make_classification_decoder},
    {"PerceiverForImageClassificationFourier", make_fourier_image_preprocessor, make_classification_decoder},
    {"PerceiverForImageClassificationLearned", make_learned_image_preprocessor, make_classification_decoder},
};

}  // namespace

const ArchitectureEntry& find_architecture(const std::string& name) {
  for (const auto& entry : kArchitectures)
    if (name == entry.architecture) return entry;
  throw Error(ErrorKind::model, "config.json: unsupported architecture '" + printable(name) + "'");
}

}  // namespace perceiver
