"""Generic helpers that EDM users know from `dnnlib.util`, written for this project."""

import hashlib
import importlib
import io
import os
import re
import sys
import tempfile
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
            self.file.write(text)
        self.stdout.write(text)
        if self.should_flush:
            self.flush()

    def flush(self):
        if self.file is not None:
            self.file.flush()
        self.stdout.flush()

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
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(dir=cache_dir, prefix='.tmp-')
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(tmp_path, cache_path)
        if return_filename:
            return cache_path
    assert not return_filename
    return io.BytesIO(data)


try:
    import click as _click
    _UserErrorBase = _click.ClickException
except ImportError:  # dnnlib itself does not need click; the scripts do
    _UserErrorBase = Exception


class UserError(_UserErrorBase):
    """A mistake in the user's input (a path, an option, a file's contents).

    Raised by library code with a one-line message that names the file or option; the click
    scripts print it as `Error: <message>` and exit with status 1, without a traceback."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message

    def __str__(self):
        return self.message


class atomic_write:
    """Context manager that writes `path` through a temporary file in the same folder.

    The file appears under its final name only when the block ends without an exception, so an
    interrupted run never leaves a truncated snapshot, state or data set behind, and whatever was
    at `path` before stays intact until the new file is complete.

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
        fd, self.tmp_path = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(self.path) + '.', suffix='.tmp')
        self.file = os.fdopen(fd, self.mode, **self.open_kwargs)
        return self.file

    def __exit__(self, exc_type, _exc, _tb):
        self.file.close()
        if exc_type is None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp_path, 0o666 & ~umask)
            os.replace(self.tmp_path, self.path)
        else:
            os.unlink(self.tmp_path)
        return False
