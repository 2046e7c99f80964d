"""Pickles that keep loading after the code changes.

A class decorated with `@persistent_class` pickles as (its module's source code, its class name,
its instance state) instead of as a reference to an importable module. Loading executes that
source in a fresh, cached module and rebuilds the object from it, so a snapshot written by an
older version of `training/networks.py` loads with exactly the code that wrote it, with only this
package (`torch_utils.persistence`) on the path. The record layout (`type`, `version`,
`module_src`, `class_name`, `state`, loaded by `_reconstruct_persistent_obj`) is the one EDM's
snapshots use, so EDM's published pickles load too.
"""

import copy
import hashlib
import inspect
import io
import pickle
import sys
import types
import uuid

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
