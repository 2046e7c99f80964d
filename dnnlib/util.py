"""Generic helpers that EDM users know from `dnnlib.util`, written for this project."""

import contextlib
import contextvars
import errno
import hashlib
import importlib
import io
import math
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import time
import urllib.parse
import urllib.request


class EasyDict(dict):
    """A dict whose keys are also attributes (`d.lr` is `d['lr']`), so option bundles read well."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]


class Logger:
    """Copies everything written to stdout and stderr into a log file as well.

    Used by train.py so that `log.txt` holds exactly what the console showed."""

    def __init__(self, file_name=None, file_mode='a', should_flush=True):
        self.file = open(file_name, file_mode, encoding='utf-8') if file_name else None
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        sys.stdout = self
        sys.stderr = self

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()

    def write(self, text):
        if not text:
            return
        if self.file is not None:
            self._to_file(self.file.write, text)
        self.stdout.write(text)
        if self.should_flush:
            self.flush()

    def flush(self):
        if self.file is not None:
            self._to_file(self.file.flush)
        self.stdout.flush()

    def _to_file(self, method, *args):
        """Calls a write method of the log file; when the disk is full the log stops (the console
        goes on) and the one-line error of `raise_if_disk_full` is raised."""
        try:
            method(*args)
        except OSError as exc:
            file, self.file = self.file, None
            try:
                file.close()
            except OSError:
                pass
            raise_if_disk_full(exc, file.name)
            raise

    def isatty(self):
        return False

    def close(self):
        self.flush()
        if sys.stdout is self:
            sys.stdout = self.stdout
        if sys.stderr is self:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None


def get_obj_by_name(name):
    """Returns the object named by a dotted path such as `training.networks.EDMPrecond`."""
    parts = name.split('.')
    for split in range(len(parts) - 1, 0, -1):
        module_name = '.'.join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and module_name.startswith(err.name):
                continue
            raise
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    if parts[0] in globals():
        return globals()[parts[0]]
    raise ImportError(f'cannot find object "{name}"')


def call_func_by_name(*args, func_name=None, **kwargs):
    """Calls the function named by `func_name` with the remaining arguments."""
    assert func_name is not None
    func = get_obj_by_name(func_name)
    assert callable(func), f'"{func_name}" is not callable'
    return func(*args, **kwargs)


def construct_class_by_name(*args, class_name=None, **kwargs):
    """Instantiates the class named by `class_name`; the option dicts of train.py use this."""
    return call_func_by_name(*args, func_name=class_name, **kwargs)


def make_cache_dir_path(*paths):
    """The download cache: $DNNLIB_CACHE_DIR, else ~/.cache/dnnlib (as in EDM)."""
    root = os.environ.get('DNNLIB_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'dnnlib')
    return os.path.join(root, *paths)


def _is_url(text):
    return re.match(r'^[a-z][a-z0-9+.-]*://', text) is not None


def open_url(url, cache_dir=None, cache=True, num_attempts=3, verbose=True, return_filename=False):
    """Opens a local path, a `file://` URL or an http(s) URL and returns a binary file object.

    Downloads are stored under `cache_dir` (default `make_cache_dir_path('downloads')`), keyed by
    the URL's hash, written to a temporary name and renamed, so that a broken download never
    poses as a complete file."""
    if not _is_url(url):
        return url if return_filename else open(url, 'rb')
    scheme = urllib.parse.urlparse(url).scheme
    if scheme == 'file':
        path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
        return path if return_filename else open(path, 'rb')
    if scheme not in ('http', 'https'):
        raise ValueError(f'unsupported URL scheme in "{url}"')

    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    name = re.sub(r'[^0-9a-zA-Z._-]', '_', os.path.basename(urllib.parse.urlparse(url).path)) or 'download'
    cache_path = os.path.join(cache_dir, f'{url_md5}_{name}')
    if cache and os.path.isfile(cache_path):
        return cache_path if return_filename else open(cache_path, 'rb')

    import requests  # imported late: most runs never download anything
    data = None
    last_error = None
    for attempt in range(num_attempts):
        try:
            if verbose:
                print(f'Downloading {url} ...', end='', flush=True, file=sys.stderr)
            with requests.get(url, timeout=60) as res:
                res.raise_for_status()
                data = res.content
            if verbose:
                print(' done', file=sys.stderr)
            break
        except Exception as err:  # network errors differ by platform; retry all of them
            last_error = err
            if verbose:
                print(' failed', file=sys.stderr)
    if data is None:
        raise IOError(f'could not download {url}: {last_error}')

    if cache:
        with atomic_write(cache_path, 'wb') as f:
            f.write(data)
        if return_filename:
            return cache_path
    assert not return_filename
    return io.BytesIO(data)


try:
    import click as _click
    _UserErrorBase = _click.ClickException
except ImportError:  # dnnlib itself does not need click; the scripts do
    _click, _UserErrorBase = None, Exception


class UserError(_UserErrorBase):
    """A mistake in the user's input (a path, an option, a file's contents).

    Raised by library code with a one-line message that names the file or option; the click
    scripts print it as `Error: <message>` and exit with status 1, without a traceback. A
    UserError raised in a DataLoader worker is rebuilt by PyTorch from a message holding the
    worker's traceback; only its last line, the original message, is kept. Library code writes
    the other arguments that a message mentions (advice such as "pass `overwrite` to replace it")
    in backquotes, which a script's `option_errors` turns into its option names."""

    def __init__(self, message):
        match = re.search(r'in DataLoader worker process \d+\..*\n(?:[\w.]+\.)?UserError: (.*?)\s*$', str(message), re.S)
        if match:
            message = match.group(1)
        super().__init__(message)
        self.message = message

    def __str__(self):
        return self.message


class FieldError(UserError):
    """A bad value of a named argument of library code: the message names the argument as a
    Python caller wrote it (`field`, e.g. 'real_p' or 'dataset_kwargs.path'; a sequence of names
    for values that are only wrong together, shown joined by '/'); a script re-raises it under its
    own option names with `option_errors`. A `value` (text) is shown as `field=value`."""

    def __init__(self, field, detail, value=None):
        self.fields = (field,) if isinstance(field, str) else tuple(field)
        self.field, self.detail, self.value = '/'.join(self.fields), detail, value
        super().__init__(f'{self.field}{self.shown(value)}: {detail}')

    @staticmethod
    def shown(value):
        return '' if value is None else f'={value}'


@contextlib.contextmanager
def field_of(field):
    """Raises a plain UserError inside again as a FieldError of the argument `field` (one name or
    several, as in FieldError), for helpers that check a value (a file, say) without knowing
    which argument passed it."""
    try:
        yield
    except FieldError:
        raise
    except UserError as err:
        raise FieldError(field, err.message) from None


_active_option_errors = contextvars.ContextVar('active_option_errors', default=())


def notice(detail, field=None):
    """A line that library code prints, `field: detail` (or `detail`), with the field and the
    backquoted argument names in `detail` named as the options of the script running it (the
    innermost `option_errors`); as they are in a Python caller."""
    active = _active_option_errors.get()
    if active:
        detail, field = active[-1].rename(detail), None if field is None else active[-1].option_name(field)
    return detail if field is None else f'{field}: {detail}'


class option_errors(contextlib.ContextDecorator):
    """Context manager (or decorator) for a click script: a FieldError inside is raised again as a
    UserError that names the option, and the backquoted argument names in any UserError's message
    (and in notices, `notice`) become option names too. The option is `names[field]` if
    given, else the option of `command` (by default the running click command) whose parameter is
    called `field` (its last dotted part), else the field itself; a backquoted name without an
    option stays as it is."""

    def __init__(self, command=None, names=None):
        self.command, self.names = command, dict(names or {})
        self._tokens = []

    def option_name(self, field):
        if field in self.names:
            return self.names[field]
        last = field.rsplit('.', 1)[-1]
        command = self.command
        if command is None and _click is not None:
            command = getattr(_click.get_current_context(silent=True), 'command', None)
        for param in getattr(command, 'params', []):
            if param.name in (field, last) and getattr(param, 'opts', None):
                return param.opts[0]
        return field

    def rename(self, text):
        """`text` with each backquoted argument name that has an option replaced by the option."""
        def option(match):
            name = self.option_name(match.group(1))
            return match.group(0) if name == match.group(1) else name
        return re.sub(r'`([A-Za-z_][\w.]*)`', option, text)

    def message(self, err):
        """The message of the UserError `err` with option names for argument names."""
        if isinstance(err, FieldError):
            head = '/'.join(self.option_name(field) for field in err.fields)
            return f'{head}{err.shown(err.value)}: {self.rename(err.detail)}'
        return self.rename(err.message)

    def __enter__(self):
        self._tokens.append(_active_option_errors.set(_active_option_errors.get() + (self,)))
        return self

    def __exit__(self, kind, err, tb):
        _active_option_errors.reset(self._tokens.pop())
        if isinstance(err, UserError):
            message = self.message(err)
            if isinstance(err, FieldError) or message != err.message:
                raise UserError(message) from None
        return False


if _click is not None:
    class AliasOption(_click.Option):
        """A click option whose first name is the one shown (in --help and in errors); its further
        names, older spellings such as EDM's, are accepted but not listed."""

        def _shown(self, method, ctx):
            names, self.opts = self.opts, self.opts[:1]
            try:
                return method(ctx)
            finally:
                self.opts = names

        def get_help_record(self, ctx):
            return self._shown(super().get_help_record, ctx)

        def get_error_hint(self, ctx):
            return self._shown(super().get_error_hint, ctx)


def check_finite_options(command, values, infinite_ok=()):
    """Raises UserError for a float option of the click `command` whose value in `values` (a dict
    by parameter name) is NaN, or infinite unless named in `infinite_ok`: click's ranges let NaN
    through."""
    for param in command.params:
        value = values.get(param.name)
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value) and param.name not in infinite_ok):
            raise UserError(f'{param.opts[0]}={value}: must be a finite number')


def named_error(name, detail, value=None):
    """The error of a check that is told what to name: a command-line option ('--dest') gives a
    UserError naming it, a Python argument ('dest') a FieldError that a script renames."""
    if name.startswith('-'):
        return UserError(f'{name}{FieldError.shown(value)}: {detail}')
    return FieldError(name, detail, value)


def check_output_dir(path, option):
    """Raises `named_error(option, ...)` unless `path` is a folder that exists or can be made, and is writable;
    scripts call it before any slow work so that a bad output is reported first."""
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise named_error(option, 'is a file, not a folder', path)
    check_name_lengths(full, option, reserve=0)
    _check_writable_ancestor(full, option)


def check_output_file(path, option):
    """Raises `named_error(option, ...)` unless `path` names a file (not a folder) in a folder that exists or can be
    made, and is writable."""
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise named_error(option, 'is a folder; give a file name', path)
    check_name_lengths(full, option)
    _check_writable_ancestor(os.path.dirname(full), option)


# What a temporary name adds to the final one: `.` + `.<pid>-<host>.<8 hex digits>.tmp` (pids up to
# 10 digits, the host as 8 hex digits).
TEMP_NAME_EXTRA = 1 + 1 + 10 + 1 + 8 + 1 + 8 + 4


def _path_limit(folder, name, default):
    """os.pathconf's `name` for `folder` (or its nearest existing ancestor); `default` where the
    system does not say."""
    while folder and not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError, AttributeError):
        return default


def max_name_bytes(folder):
    """The longest file name (in bytes) that the file system of `folder` takes; 255 where it does
    not say."""
    return _path_limit(folder, 'PC_NAME_MAX', 255)


def max_path_bytes(folder):
    """The longest path (in bytes, with its terminating zero) that the system takes below `folder`;
    4096 where it does not say."""
    return _path_limit(folder, 'PC_PATH_MAX', 4096)


def check_name_lengths(path, option, reserve=TEMP_NAME_EXTRA):
    """Raises UserError when `path` or a part of it is longer than the system allows; the last part
    must leave `reserve` bytes for the temporary name it is written through. Checked before any
    slow work, so that a long name fails at once and not when the first file is written."""
    full = os.path.abspath(path)
    limit = max_name_bytes(os.path.dirname(full))
    size, most = len(os.fsencode(full)) + reserve, max_path_bytes(os.path.dirname(full))
    if size >= most:
        room = f' (+{reserve} for its temporary name)' if reserve else ''
        raise named_error(option, f'the path is {size - reserve} bytes long{room}; this system takes paths of at most {most - 1} bytes')
    parts = full.split(os.sep)
    for index, part in enumerate(parts):
        extra = reserve if index == len(parts) - 1 else 0
        size = len(os.fsencode(part))
        if size + extra > limit:
            room = f' (written through a temporary name {extra} bytes longer)' if extra else ''
            raise named_error(option, f'the name "{part[:40]}..." is {size} bytes long{room}; '
                                      f'this file system takes at most {limit} bytes per name')


MAX_NEW_FOLDERS = 200  # os.makedirs recurses once per missing folder, within Python's recursion limit


def _check_writable_ancestor(folder, option):
    """The nearest existing ancestor of `folder` (itself included) must be a writable folder: a file
    is made there and removed (unnamed where the file system allows), since permission bits say
    nothing for root, and network or special file systems may refuse what they allow."""
    existing, missing = folder, 0
    while not os.path.exists(existing):
        existing, missing = os.path.dirname(existing), missing + 1
    if missing > MAX_NEW_FOLDERS:
        raise named_error(option, f'would make {missing} nested folders below {existing}; at most {MAX_NEW_FOLDERS} are made')
    if not os.path.isdir(existing):
        raise named_error(option, f'cannot create folder {folder}, {existing} is a file')
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise named_error(option, f'folder {existing} is not writable ({exc.strerror or exc})') from None


# Temporary files: `.<final name>.<pid>-<host>.<8 hex digits>.tmp` beside the final file, so that
# the name says what they become and which process on which machine writes them; <host> is
# HOST_TAG. A name without the host part is judged as one written on this machine.
_TEMP_PATTERN = re.compile(r'^\.(?P<name>.+)\.(?P<pid>\d+)(?:-(?P<host>[0-9a-f]{8}))?\.[0-9a-f]{8}\.tmp$')
HOST_TAG = hashlib.sha256(socket.gethostname().encode('utf-8', 'replace')).hexdigest()[:8]
STALE_TEMP_SECONDS = 60  # unchanged this long, a temporary file of a gone process here is stale
FOREIGN_TEMP_SECONDS = 24 * 3600  # unchanged this long, one written on another machine is stale
_cleaned_folders = set()  # folders this process has already cleaned


def temp_path_for(path):
    """A new, unused temporary name beside `path` (the file itself is not created)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f'.{name}.{os.getpid()}-{HOST_TAG}.{secrets.token_hex(4)}.tmp')


def process_exists(pid):
    """True when a process `pid` runs on this machine (whoever owns it)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: beyond any pid this system can have
        return False
    except OSError:  # exists, but owned by another user
        return True
    return True


def _last_change(path):
    """The latest modification time of `path` and, for a folder, of anything inside it (a folder's
    own time does not change while files are written into its sub-folders)."""
    newest = os.lstat(path).st_mtime
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            for entry in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, entry)).st_mtime)
                except FileNotFoundError:
                    pass
    return newest


def is_stale_temp(path, pid, host=None):
    """True when the writer of a temporary file is gone. Written on this machine (`host` is
    HOST_TAG or None): no process `pid` exists and nothing in it changed for STALE_TEMP_SECONDS,
    which spares a writer in another process namespace of the same host. Written on another
    machine, whose processes cannot be seen from here: nothing in it changed for
    FOREIGN_TEMP_SECONDS."""
    if host in (None, HOST_TAG):
        if process_exists(pid):
            return False
        limit = STALE_TEMP_SECONDS
    else:
        limit = FOREIGN_TEMP_SECONDS
    try:
        return time.time() - _last_change(path) > limit
    except FileNotFoundError:
        return False


def remove_stale_temps(folder):
    """Deletes the temporary files (and folders) that killed writers of this project left in
    `folder`, judged by `is_stale_temp`; nothing whose name is not of `temp_path_for`'s form is
    touched. Returns the paths removed."""
    _cleaned_folders.add(os.path.abspath(folder))
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_PATTERN.match(entry)
        full = os.path.join(folder, entry)
        if match and is_stale_temp(full, int(match.group('pid')), match.group('host')):
            try:
                shutil.rmtree(full) if os.path.isdir(full) and not os.path.islink(full) else os.remove(full)
                removed.append(full)
            except OSError:  # cleaned by another process first, or another user's to remove
                pass
    return removed


class atomic_write:
    """Context manager that writes `path` through a temporary file in the same folder.

    The file appears under its final name only when the block ends without an exception, so an
    interrupted run never leaves a truncated snapshot, state or data set behind, and whatever was
    at `path` before stays intact until the new file is complete. The temporary file is removed
    when the block or the final rename fails, and those that killed writers left in the folder
    are removed by the first write of this process there (one scan, even for 50k images).

        with atomic_write(path, 'wb') as f:
            pickle.dump(data, f)
    """

    def __init__(self, path, mode='wb', **open_kwargs):
        self.path = os.fspath(path)
        self.mode = mode
        self.open_kwargs = open_kwargs
        self.file = None
        self.tmp_path = None

    def __enter__(self):
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        if folder not in _cleaned_folders:
            remove_stale_temps(folder)
        self.tmp_path = temp_path_for(self.path)
        self.file = open(self.tmp_path, self.mode.replace('w', 'x'), **self.open_kwargs)
        return self.file

    def __exit__(self, exc_type, exc, _tb):
        try:
            with disk_full_errors(self.path):
                try:
                    self.file.close()
                finally:
                    if exc is not None:
                        raise_if_disk_full(exc, self.path)
                if exc_type is None:
                    os.replace(self.tmp_path, self.path)
        finally:
            if os.path.lexists(self.tmp_path):
                os.unlink(self.tmp_path)
        return False


_DISK_FULL = {errno.ENOSPC: 'no space left on the device', getattr(errno, 'EDQUOT', errno.ENOSPC): 'the disk quota is used up',
              errno.EFBIG: 'larger than the file-size limit of this process (ulimit -f)'}


def raise_if_disk_full(exc, path):
    """Raises the one-line UserError of a full disk, an exhausted quota or a file-size limit when
    `exc` is that OSError while writing `path`; returns otherwise."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        raise UserError(f'{path}: {_DISK_FULL[exc.errno]} (files being written are left out); free some space or raise '
                        f'the limit and run again') from None


class disk_full_errors:
    """Context manager: an OSError for a full disk inside becomes `raise_if_disk_full`'s UserError
    naming `path`; other errors pass unchanged."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, _kind, exc, _tb):
        if exc is not None:
            raise_if_disk_full(exc, self.path)
        return False
