// CPU emulation stand-in for the CUDA header of this name (see vpemu.h).
#pragma once
#include "vpemu.h"
