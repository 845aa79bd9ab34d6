// The fused modules' parameter stamp: whether the tensors a prepared call was built from are
// still the module's, unchanged, checked in one C call instead of ~3 µs of Python per call.
//
// Why. A fused module's eval fast path (videoconv/ops/_direct.py) re-checks on every call that
// the parameters its prepared call folded and packed have not changed: every source tensor's
// identity, storage address, version counter, dtype and device, read through the module's
// `_parameters`/`_buffers` (videoconv/nn/_common.py, `_fold_sources_of` and `_sources_key`).
// In Python that is 7 to 14 dict lookups and 35 to 70 attribute reads building a tuple, 3-5 µs
// per call in a loop, and a fused X3D-S makes 116 such calls a forward (skipping all of the
// guard's work, unsafely, made its bfloat16 forward 1.075x faster on the 2-core Zen 5: the
// bound). The stamp records the same facts once, when the call is prepared, and
// `parameter_stamp_holds` compares them in ~0.5 µs without allocating anything.
//
// What it records, per source (module, name): where the value was found (`_parameters`, else
// `_buffers`: the order `module_tensor` reads them in), a weak reference to it (or that it was
// None), the tensor's storage (held: while it is alive no other storage can have its address),
// its data pointer, version counter, dtype and device. It holds when every module is the same
// object, each name is still found in the same dict of its module, as the same object, and every
// tensor still has the same data pointer, version, dtype and device: what `_sources_key` reads.
// A value in neither dict (a parametrized weight, a new tensor on every access), an inference
// tensor (no version counter) or anything unreadable gets no stamp: None, and the module keeps
// the Python check.

#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace videoconv {
namespace {

struct StampEntry {
  size_t module = 0;             // index into Stamp::modules
  PyObject* name = nullptr;      // owned (a str)
  bool in_buffers = false;       // found in `_buffers` (and not in `_parameters`)
  PyObject* value_ref = nullptr; // owned weak reference to the tensor; nullptr for a None value
  c10::Storage storage;          // kept alive: its address stays unique while stamped
  const void* data = nullptr;
  int64_t version = 0;
  at::ScalarType dtype = at::ScalarType::Undefined;
  at::Device device = at::Device(at::kCPU);
};

// Only weak references to Python objects: the stamp lives in the fused module's __dict__, and a
// capsule is not seen by the cycle collector, so a strong reference to a module or tensor that
// somehow refers back to the fused module would make the model uncollectable. A weak reference
// gives the identity check too: while the object lives, no other object has its address, and
// once it is gone the reference gives None, which matches nothing.
struct Stamp {
  std::vector<PyObject*> modules;  // owned weak references; nullptr where a role has no module
  std::vector<StampEntry> entries;

  ~Stamp() {
    for (auto& e : entries) {
      Py_XDECREF(e.name);
      Py_XDECREF(e.value_ref);
    }
    for (PyObject* m : modules) Py_XDECREF(m);
  }
};

constexpr const char* kCapsuleName = "videoconv.parameter_stamp";

void destroy_stamp(PyObject* capsule) {
  delete static_cast<Stamp*>(PyCapsule_GetPointer(capsule, kCapsuleName));
}

// The object a weak reference refers to (borrowed), or nullptr once it is gone.
PyObject* referent(PyObject* ref) {
  PyObject* obj = PyWeakref_GetObject(ref);
  return obj == Py_None ? nullptr : obj;
}

// The module's attribute `attr` (a dict; `attr` an interned str), new reference; nullptr, with
// no error set, when it is missing or not a dict.
PyObject* module_dict(PyObject* module, PyObject* attr) {
  PyObject* d = PyObject_GetAttr(module, attr);
  if (d == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  if (!PyDict_Check(d)) {
    Py_DECREF(d);
    return nullptr;
  }
  return d;
}

// "_parameters" and "_buffers", interned once (PyObject_GetAttrString would make a new str on
// every call).
PyObject* attr_name(int which) {
  static PyObject* names[2] = {PyUnicode_InternFromString("_parameters"),
                               PyUnicode_InternFromString("_buffers")};
  return names[which];
}

// `name` looked up as module_tensor does (`_parameters`, then `_buffers`), borrowed, with where
// it was found; nullptr (no error set) when in neither.
PyObject* lookup(PyObject* params, PyObject* buffers, PyObject* name, bool* in_buffers) {
  PyObject* value = PyDict_GetItemWithError(params, name);
  *in_buffers = false;
  if (value == nullptr && !PyErr_Occurred()) {
    value = PyDict_GetItemWithError(buffers, name);
    *in_buffers = true;
  }
  if (value == nullptr) PyErr_Clear();
  return value;
}

// Whether `value` (a tensor) still has what `e` recorded. const_data_ptr: the address without
// materialising a lazily copied (copy-on-write) storage, which data_ptr() would do. Nothing may
// throw through the C API: an error is a mismatch (the Python check then runs, and raises as it
// would have).
bool tensor_unchanged(const StampEntry& e, PyObject* value) {
  const at::Tensor& t = THPVariable_Unpack(value);
  try {
    return !t.is_inference() && t._version() == e.version && t.scalar_type() == e.dtype &&
           t.device() == e.device && t.const_data_ptr() == e.data;
  } catch (...) {
    return false;
  }
}

// parameter_stamp(specs) -> stamp or None. `specs` is a tuple of (module or None, names) pairs,
// `names` a tuple of str: the sources of a fold, in order (videoconv/nn/_common.py).
PyObject* parameter_stamp(PyObject* /*self*/, PyObject* specs) {
  if (!PyTuple_Check(specs)) {
    PyErr_SetString(PyExc_TypeError, "parameter_stamp expects a tuple of (module, names) pairs");
    return nullptr;
  }
  auto stamp = std::make_unique<Stamp>();
  const Py_ssize_t n_specs = PyTuple_GET_SIZE(specs);
  for (Py_ssize_t i = 0; i < n_specs; ++i) {
    PyObject* spec = PyTuple_GET_ITEM(specs, i);
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 2 ||
        !PyTuple_Check(PyTuple_GET_ITEM(spec, 1))) {
      PyErr_SetString(PyExc_TypeError, "parameter_stamp: each spec is (module, tuple of names)");
      return nullptr;
    }
    PyObject* module = PyTuple_GET_ITEM(spec, 0);
    if (module == Py_None) {
      stamp->modules.push_back(nullptr);
      continue;
    }
    PyObject* module_ref = PyWeakref_NewRef(module, nullptr);
    if (module_ref == nullptr) {  // not weak-referenceable: no stamp
      PyErr_Clear();
      Py_RETURN_NONE;
    }
    stamp->modules.push_back(module_ref);
    PyObject* names = PyTuple_GET_ITEM(spec, 1);
    PyObject* params = module_dict(module, attr_name(0));
    PyObject* buffers = module_dict(module, attr_name(1));
    bool ok = params != nullptr && buffers != nullptr;
    for (Py_ssize_t j = 0; ok && j < PyTuple_GET_SIZE(names); ++j) {
      StampEntry e;
      e.module = stamp->modules.size() - 1;
      PyObject* name = PyTuple_GET_ITEM(names, j);
      PyObject* value = lookup(params, buffers, name, &e.in_buffers);
      if (value == nullptr) {  // computed on access (a parametrization)
        ok = false;
        break;
      }
      if (value != Py_None) {
        if (!THPVariable_Check(value)) {
          ok = false;
          break;
        }
        const at::Tensor& t = THPVariable_Unpack(value);
        if (t.is_inference() || !t.has_storage()) {  // no version counter / no address
          ok = false;
          break;
        }
        try {  // nothing may throw through the C API: a tensor that cannot be read gets no stamp
          e.storage = t.storage();
          e.data = t.const_data_ptr();
          e.version = t._version();
          e.dtype = t.scalar_type();
          e.device = t.device();
        } catch (...) {
          ok = false;
          break;
        }
        e.value_ref = PyWeakref_NewRef(value, nullptr);
        if (e.value_ref == nullptr) {
          PyErr_Clear();
          ok = false;
          break;
        }
      }
      Py_INCREF(name);
      e.name = name;
      stamp->entries.push_back(std::move(e));
    }
    Py_XDECREF(params);
    Py_XDECREF(buffers);
    if (!ok) Py_RETURN_NONE;  // the Python check stays in charge
  }
  return PyCapsule_New(stamp.release(), kCapsuleName, destroy_stamp);
}

// parameter_stamp_holds(stamp, modules) -> bool. `modules` is the tuple of the specs' modules
// (or None) as the fused module resolves them now.
PyObject* parameter_stamp_holds(PyObject* /*self*/, PyObject* args) {
  PyObject* capsule;
  PyObject* modules;
  if (!PyArg_ParseTuple(args, "OO!", &capsule, &PyTuple_Type, &modules)) return nullptr;
  auto* stamp = static_cast<Stamp*>(PyCapsule_GetPointer(capsule, kCapsuleName));
  if (stamp == nullptr) return nullptr;
  const auto n = static_cast<Py_ssize_t>(stamp->modules.size());
  if (PyTuple_GET_SIZE(modules) != n) Py_RETURN_FALSE;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* ref = stamp->modules[static_cast<size_t>(i)];
    PyObject* now = PyTuple_GET_ITEM(modules, i);
    if (ref == nullptr ? now != Py_None : referent(ref) != now) Py_RETURN_FALSE;
  }
  size_t module = SIZE_MAX;
  PyObject* params = nullptr;  // the current module's dicts, borrowed while it holds them
  PyObject* buffers = nullptr;
  for (const StampEntry& e : stamp->entries) {
    if (e.module != module) {  // entries are grouped by module: its dicts are read once
      module = e.module;
      PyObject* owner = PyTuple_GET_ITEM(modules, static_cast<Py_ssize_t>(module));
      PyObject* p = module_dict(owner, attr_name(0));
      PyObject* b = module_dict(owner, attr_name(1));
      Py_XDECREF(p);  // still alive: the module (alive: the caller holds it) holds them
      Py_XDECREF(b);
      params = p;
      buffers = b;
      if (params == nullptr || buffers == nullptr) Py_RETURN_FALSE;
    }
    bool in_buffers = false;
    PyObject* value = lookup(params, buffers, e.name, &in_buffers);
    if (value == nullptr || in_buffers != e.in_buffers) Py_RETURN_FALSE;  // moved, or removed
    if (e.value_ref == nullptr) {
      if (value != Py_None) Py_RETURN_FALSE;
    } else if (referent(e.value_ref) != value || !tensor_unchanged(e, value)) {
      Py_RETURN_FALSE;  // replaced (or gone), or changed in place / through .data
    }
  }
  Py_RETURN_TRUE;
}

}  // namespace

PyMethodDef parameter_stamp_methods[] = {
    {"parameter_stamp", parameter_stamp, METH_O,
     "parameter_stamp(specs): the stamp of the tensors named in specs ((module, names) pairs), "
     "or None when one of them cannot be stamped"},
    {"parameter_stamp_holds", parameter_stamp_holds, METH_VARARGS,
     "parameter_stamp_holds(stamp, modules): whether every stamped tensor is unchanged"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace videoconv
