// DS_CHECK(cond, message parts...): argument checks of the op bindings.
//
// Same use as TORCH_CHECK, but a failed check throws std::runtime_error,
// which pybind11 turns into a Python RuntimeError with the message. Why not
// TORCH_CHECK: with some torch wheels and host compilers a c10::Error thrown
// from a JIT-built extension kills the process with SIGSEGV instead of
// reaching Python (seen 2026-11-27 with torch 2.11.0+cu130 on a GPU
// machine's image: a minimal load_inline extension crashed on TORCH_CHECK
// and raised cleanly on std::runtime_error). A bad argument must give an
// error that names it, never a crash.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace ds_check_detail {

inline void append(std::ostringstream&) {}

template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& value, const Rest&... rest)
{
    os << value;
    append(os, rest...);
}

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts)
{
    std::ostringstream os;
    append(os, parts...);
    throw std::runtime_error(os.str());
}

}  // namespace ds_check_detail

#define DS_CHECK(cond, ...)                                   \
    do {                                                      \
        if (!(cond)) { ::ds_check_detail::fail(__VA_ARGS__); } \
    } while (0)
