"""Pickles that keep loading after the code changes.

A class decorated with `@persistent_class` pickles as (its module's source code, its class name,
its instance state) instead of as a reference to an importable module. Loading executes that
source in a fresh, cached module and rebuilds the object from it, so a snapshot written by an
older version of `training/networks.py` loads with exactly the code that wrote it, with only this
package (`torch_utils.persistence`) on the path. The record layout (`type`, `version`,
`module_src`, `class_name`, `state`, loaded by `_reconstruct_persistent_obj`) is the one EDM's
snapshots use, so EDM's published pickles load too.

`restricted_loads` reads the same pickles without running anything from them: it knows a short
list of globals (tensor and storage rebuilding, a few containers), turns every persistent record
into a `PersistentRecord` (class name and state; the module source is never executed), and
refuses everything else with `RefusedPickle`. `training.checkpoints` rebuilds the networks from
those records onto this project's classes.
"""

import collections
import copy
import hashlib
import inspect
import io
import pickle
import sys
import types
import uuid

import torch

import dnnlib

_FORMAT_VERSION = 6
_persistent_classes = set()
_modules_by_src = {}
_import_hooks = []
_module_name_prefix = '_imported_module_'


def persistent_class(orig_class):
    """Class decorator: instances pickle together with the source code of the class's module.

    The decorated class remembers its constructor arguments (`init_args`, `init_kwargs`), which
    also lets tools rebuild a network from its description without unpickling code."""
    assert isinstance(orig_class, type)
    if is_persistent(orig_class):
        return orig_class
    module = sys.modules[orig_class.__module__]
    module_src = _module_to_src(module)

    class Persistent(orig_class):
        _orig_module_src = module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)
            assert orig_class.__name__ in module.__dict__
            _check_pickleable(self.__reduce__())

        @property
        def init_args(self):
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type='class', version=_FORMAT_VERSION, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0] = _reconstruct_persistent_obj
                fields[1] = (meta,)
                fields[2] = None
            return tuple(fields)

    Persistent.__name__ = orig_class.__name__
    Persistent.__module__ = orig_class.__module__
    Persistent.__qualname__ = orig_class.__qualname__
    Persistent.__doc__ = orig_class.__doc__
    _persistent_classes.add(Persistent)
    return Persistent


def is_persistent(obj):
    """True for a persistent class or an instance of one."""
    try:
        if obj in _persistent_classes:
            return True
    except TypeError:
        pass
    return type(obj) in _persistent_classes


def import_hook(hook):
    """Registers `hook(meta) -> meta`, called on every persistent record before it is rebuilt,
    so that renamed classes or changed state layouts of old snapshots can be patched up."""
    assert callable(hook)
    _import_hooks.append(hook)


def _reconstruct_persistent_obj(meta):
    """Rebuilds a persistent object from its pickled record (called by pickle)."""
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        assert meta is not None
    if meta.version != _FORMAT_VERSION:
        raise pickle.UnpicklingError(f'unsupported persistent record version {meta.version}')
    assert meta.type == 'class'
    module = _src_to_module(meta.module_src)
    orig_class = module.__dict__[meta.class_name]
    decorated = persistent_class(orig_class)
    obj = decorated.__new__(decorated)
    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(meta.state)
    else:
        obj.__dict__.update(meta.state)
    return obj


def _module_to_src(module):
    """The source text of a module (from the cache if it was itself loaded from a pickle)."""
    src = getattr(module, '__persistent_src__', None)
    if src is None:
        src = inspect.getsource(module)
    return src


def _src_to_module(src):
    """Executes module source once per distinct text and returns the resulting module."""
    module = _modules_by_src.get(src)
    if module is None:
        name = _module_name_prefix + hashlib.sha1(src.encode('utf-8')).hexdigest()[:16] + '_' + uuid.uuid4().hex[:8]
        module = types.ModuleType(name)
        module.__persistent_src__ = src
        sys.modules[name] = module
        _modules_by_src[src] = module
        exec(compile(src, f'<persistent {name}>', 'exec'), module.__dict__)  # noqa: S102 - the point of persistence
    return module


def _check_pickleable(obj):
    """Fails early, at construction, if constructor arguments could not be pickled later."""
    def walk(value):
        if isinstance(value, (type(None), str, int, float, bool, complex, bytes, bytearray)):
            return
        if isinstance(value, (list, tuple, set)):
            for item in value:
                walk(item)
            return
        if isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
            return
        if isinstance(value, (type, types.FunctionType)) or is_persistent(value):
            return
        if type(value).__module__ in ('numpy', 'torch') or type(value).__module__.startswith(('numpy.', 'torch.')):
            return
        pickle.dump(value, io.BytesIO())
    walk(obj[1] if len(obj) > 1 else None)


# ----------------------------------------------------------------------------------------------
# Reading pickles without running their code.


class RefusedPickle(pickle.UnpicklingError):
    """A pickle needs something `restricted_loads` does not allow (`what`: a global's dotted name
    or an operation), which could run code."""

    def __init__(self, what):
        super().__init__(what)
        self.what = what


class PersistentRecord:
    """What a persistent object's pickle record says, read without executing its module source:
    the class name and the instance state (a dict whose sub-objects are records too)."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or not isinstance(meta.get('class_name'), str) or not isinstance(meta.get('state'), dict):
            raise RefusedPickle('a persistent record without class_name and state')
        self.class_name = meta['class_name']
        self.state = meta['state']

    @property
    def init_args(self):
        return list(self.state.get('_init_args', ()))

    @property
    def init_kwargs(self):
        return dict(self.state.get('_init_kwargs', {}))

    def __repr__(self):
        return f'<persistent record of {self.class_name}>'


class ModuleRecord:
    """A `torch.nn` container (ModuleDict, ModuleList, Sequential) read as its plain state."""

    def __init__(self, *_args):
        self.state = {}

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise RefusedPickle('a torch.nn container with a non-dict state')
        self.state = state


def _storage_from_bytes(data):
    """A tensor storage that `torch.save` wrote into a pickle (how tensors pickle), read with
    `weights_only=True`, which holds no code."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location='cpu')


def _reconstructor(cls, base, state):
    """copyreg's protocol-0/1 object builder, for the allowed containers only."""
    if cls is not ModuleRecord or base is not object:
        raise RefusedPickle(f'copyreg._reconstructor of {getattr(cls, "__name__", cls)}')
    return ModuleRecord()


def _record(meta):
    return PersistentRecord(meta)


_ALLOWED_GLOBALS = {
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _record,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('copyreg', '_reconstructor'): _reconstructor,
    ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
    ('torch.storage', '_load_from_bytes'): _storage_from_bytes,
    ('torch', 'Size'): torch.Size,
    ('torch.nn.modules.container', 'ModuleDict'): ModuleRecord,
    ('torch.nn.modules.container', 'ModuleList'): ModuleRecord,
    ('torch.nn.modules.container', 'Sequential'): ModuleRecord,
    ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
    ('dnnlib', 'EasyDict'): dnnlib.EasyDict,
}
_NUMPY_SCALARS = {'scalar', 'dtype'}  # numpy numbers in constructor arguments
_BUILD_TARGETS = (ModuleRecord, collections.OrderedDict, dnnlib.EasyDict)


def _numpy_global(module, name):
    import numpy as np
    if module == 'numpy' and name == 'dtype':
        return np.dtype
    if module in ('numpy.core.multiarray', 'numpy._core.multiarray') and name == 'scalar':
        return _numpy_scalar
    return None


def _numpy_scalar(dtype, data=None):
    """numpy's scalar rebuilder for plain (non-object) dtypes."""
    import numpy as np
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise RefusedPickle('numpy scalar of an object dtype')
    return np.frombuffer(data, dtype=dtype, count=1)[0]


class RestrictedUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD can be checked
    """An unpickler that resolves only `_ALLOWED_GLOBALS` (persistent records become
    `PersistentRecord`s), applies BUILD only to the objects it made itself, and refuses
    persistent ids, so no code from the file or its imports runs."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None and module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
            found = getattr(torch, name)
        if found is None and module.split('.')[0] == 'numpy' and name in _NUMPY_SCALARS:
            found = _numpy_global(module, name)
        if found is None:
            raise RefusedPickle(f'{module}.{name}')
        return found

    def persistent_load(self, pid):
        raise RefusedPickle('a persistent id')

    def load_build(self):
        import numpy as np
        target = self.stack[-2]  # BUILD pops the state, then sets it on the object below it
        if not isinstance(target, _BUILD_TARGETS + (np.dtype,)):
            raise RefusedPickle(f'setting the state of a {type(target).__name__}')
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def restricted_loads(data):
    """The object pickled in `data` (bytes), with persistent objects as `PersistentRecord`s; raises
    `RefusedPickle` for anything that could run code, `pickle.UnpicklingError` (or the error of the
    damaged opcode) for a broken pickle."""
    return RestrictedUnpickler(io.BytesIO(data)).load()
