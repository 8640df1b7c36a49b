// Output files appear whole or not at all: declared in the public include/perceiver/io.h.
#pragma once

#include "perceiver/io.h"
