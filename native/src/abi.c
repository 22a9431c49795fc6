/* The shared library is the C API of eaglex_core (include/eaglex.h); this unit only gives it a
   source file of its own. */
#include "eaglex.h"
