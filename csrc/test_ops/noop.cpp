// A trivial op for testing the op builder (locks, cache keys, flags), not
// the kernels: it uses only the Python C API, so it compiles in about a
// second where anything including <torch/extension.h> takes half a minute.
//
// simd_level() reports which SIMD macro the build defined, and value()
// returns NOOP_VALUE, which a test can set with -DNOOP_VALUE=<n> to check
// that a changed flag really produced a different binary.
#include <Python.h>

#ifndef NOOP_VALUE
#define NOOP_VALUE 0
#endif

#define NOOP_STR_(x) #x
#define NOOP_STR(x) NOOP_STR_(x)
#define NOOP_CAT_(a, b) a##b
#define NOOP_CAT(a, b) NOOP_CAT_(a, b)

static PyObject* noop_add_one(PyObject* /*self*/, PyObject* arg)
{
    long value = PyLong_AsLong(arg);
    if (value == -1 && PyErr_Occurred()) { return nullptr; }
    return PyLong_FromLong(value + 1);
}

static PyObject* noop_value(PyObject* /*self*/, PyObject* /*unused*/) { return PyLong_FromLong(NOOP_VALUE); }

static PyObject* noop_simd_level(PyObject* /*self*/, PyObject* /*unused*/)
{
#if defined(__AVX512__)
    return PyUnicode_FromString("avx512");
#elif defined(__AVX256__)
    return PyUnicode_FromString("avx2");
#elif defined(__SCALAR__)
    return PyUnicode_FromString("scalar");
#else
    return PyUnicode_FromString("none");
#endif
}

static PyMethodDef noop_methods[] = {
    {"add_one", noop_add_one, METH_O, "Return the argument plus one."},
    {"value", noop_value, METH_NOARGS, "Return the NOOP_VALUE macro of this build."},
    {"simd_level", noop_simd_level, METH_NOARGS, "Return the SIMD macro this build was compiled with."},
    {nullptr, nullptr, 0, nullptr},
};

static struct PyModuleDef noop_module = {
    PyModuleDef_HEAD_INIT, NOOP_STR(TORCH_EXTENSION_NAME), "Test op for the op builder.", -1, noop_methods,
};

PyMODINIT_FUNC NOOP_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&noop_module); }
