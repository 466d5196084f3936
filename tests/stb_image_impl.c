/* stb_image's implementation, compiled from Debian's header into the fuzz target and the mutation test
 * only, so that sanitizers and libFuzzer's coverage see inside the decoder. It is the same source as
 * the packaged libstb that libfinch links; these executables' copies take precedence over it. */
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>
