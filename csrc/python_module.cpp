// torch_zipml._C: loading this module runs the static registrations of the zipml operators. No
// Python bindings live here: Python reaches the operators through torch.ops.zipml.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "torch-zipml operators (torch.ops.zipml)", -1,
                                      nullptr};
  return PyModule_Create(&module);
}
}
