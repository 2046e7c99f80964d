"""Small utilities shared by every script: attribute dicts, object construction by name,
URL/path opening with a cache, and a stdout/stderr tee logger."""

from .util import (EasyDict, Logger, UserError, atomic_write, call_func_by_name, construct_class_by_name,
                   get_obj_by_name, make_cache_dir_path, open_url)

__all__ = ['EasyDict', 'Logger', 'UserError', 'atomic_write', 'call_func_by_name', 'construct_class_by_name', 'get_obj_by_name',
           'open_url', 'make_cache_dir_path']
