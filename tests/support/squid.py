"""Debian's squid as a forward proxy on loopback, the way a corporate network reaches an API.

    with Squid(keep_logs_in=tmp_path / "squid") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.proxy_url)
        ...
        proxy.access_log()   # one dict per request: method, url, status, request headers

Squid runs in the foreground (``squid -N -f CONF``) on a free loopback port, with a generated
config: no cache (``cache deny all``), no cache directory, ``shutdown_lifetime 0``, pid file and
logs in its own folder. It lets loopback clients reach loopback servers only, CONNECT included
(to ``connect_ports``, or to any unprivileged port). ``deny_all=True`` makes it refuse every
request with its own 403; ``auth=(user, password)`` makes it demand proxy credentials (squid's
``basic_ncsa_auth`` helper over a generated password file): without them, 407.

The access log records each request's headers as the proxy received them (``%>h``), so a test
can tell a CONNECT tunnel (the proxy sees only ``CONNECT host:port``) from a request sent in
clear (the proxy sees its ``Authorization`` header).

Started as root, squid must drop to an unprivileged user (it refuses to run as root): its folder
is made under the system temp directory and handed to that user (``proxy``, else ``nobody``);
``keep_logs_in`` receives a copy of the logs on exit. Without squid the test is skipped, or
failed under ``CI``: ``.ci/run`` installs it.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile

from tests.support.net import free_port
from tests.support.nginx import INSTALL, missing, stop_process, tail, wait_for_port

SQUID = "/usr/sbin/squid"
NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"
LOG_FORMAT = "%ts.%03tu %Ss/%03>Hs %rm %ru %<st [%>h]"
_LINE = re.compile(
    r"^(?P<time>\S+) (?P<result>\S+)/(?P<status>\d+) (?P<method>\S+) (?P<url>\S+) "
    r"(?P<bytes>\S+) \[(?P<headers>.*)\]$"
)


def apr1(password: str, salt: str | None = None) -> str:
    """Apache's ``$apr1$`` MD5 crypt (what ``htpasswd -m`` and ``openssl passwd -apr1`` write),
    which squid's ``basic_ncsa_auth`` checks."""
    itoa64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    magic = b"$apr1$"
    pw = password.encode()
    salt_b = (salt or "".join(secrets.choice(itoa64) for _ in range(8))).encode()[:8]
    ctx = pw + magic + salt_b
    final = hashlib.md5(pw + salt_b + pw).digest()
    for left in range(len(pw), 0, -16):
        ctx += final[: min(16, left)]
    i = len(pw)
    while i:
        ctx += b"\0" if i & 1 else pw[:1]
        i >>= 1
    final = hashlib.md5(ctx).digest()
    for i in range(1000):
        step = (pw if i & 1 else final) + (salt_b if i % 3 else b"") + (pw if i % 7 else b"")
        final = hashlib.md5(step + (final if i & 1 else pw)).digest()

    def to64(value: int, n: int) -> str:
        out = ""
        for _ in range(n):
            out += itoa64[value & 0x3F]
            value >>= 6
        return out

    f = final
    encoded = "".join(
        to64((f[a] << 16) | (f[b] << 8) | f[c], 4)
        for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5))
    ) + to64(f[11], 2)
    return f"$apr1${salt_b.decode()}${encoded}"


class Squid:
    """squid forwarding for loopback clients to loopback servers; see the module docstring."""

    def __init__(
        self,
        *,
        connect_ports: tuple[int, ...] = (),
        deny_all: bool = False,
        auth: tuple[str, str] | None = None,
        keep_logs_in=None,
        extra: tuple[str, ...] = (),
        start_timeout: float = 30,
    ):
        self.connect_ports = tuple(connect_ports)
        self.deny_all = deny_all
        self.auth = auth
        self.keep_logs_in = os.fspath(keep_logs_in) if keep_logs_in is not None else None
        self.extra = extra
        self.start_timeout = start_timeout
        self.port = 0
        self.folder = ""
        self._proc: subprocess.Popen | None = None

    @property
    def proxy_url(self) -> str:
        """``http://127.0.0.1:<port>``, with the credentials when ``auth`` is set."""
        creds = f"{self.auth[0]}:{self.auth[1]}@" if self.auth else ""
        return f"http://{creds}127.0.0.1:{self.port}"

    @property
    def bare_url(self) -> str:
        """``http://127.0.0.1:<port>``, never with credentials."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log_path(self) -> str:
        return os.path.join(self.folder, "access.log")

    @property
    def cache_log_path(self) -> str:
        return os.path.join(self.folder, "cache.log")

    def access_log_text(self) -> str:
        try:
            with open(self.access_log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def access_log(self) -> list[dict]:
        """One dict per logged request: time, result, status (int), method, url, bytes, headers
        (the request's headers as squid received them, URL-escaped text)."""
        rows = []
        for line in self.access_log_text().splitlines():
            match = _LINE.match(line.strip())
            if match:
                row = match.groupdict()
                row["status"] = int(row["status"])
                rows.append(row)
        return rows

    def config(self) -> str:
        d = self.folder
        lines = [
            f"http_port 127.0.0.1:{self.port}",
            "visible_hostname vision-enrich-test-proxy",
            f"pid_filename {d}/squid.pid",
            f"cache_log {d}/cache.log",
            f"logformat ve {LOG_FORMAT}",
            f"access_log stdio:{d}/access.log ve",
            "logfile_rotate 0",
            "cache_store_log none",
            f"coredump_dir {d}",
            "netdb_filename none",
            "cache deny all",
            "cache_mem 8 MB",
            "shutdown_lifetime 0 seconds",
            "pinger_enable off",
            "icp_port 0",
            "htcp_port 0",
            "dns_nameservers 127.0.0.1",  # never ask a resolver off the machine
            "max_filedescriptors 1024",
            "forwarded_for delete",
            "via off",
            "acl to_loopback dst 127.0.0.0/8 ::1",
            "acl tunnel method CONNECT",
        ]
        if os.geteuid() == 0:
            lines.append(f"cache_effective_user {self._user().pw_name}")
        if self.connect_ports:
            lines.append("acl tunnel_ports port " + " ".join(str(p) for p in self.connect_ports))
        else:
            lines.append("acl tunnel_ports port 1025-65535")
        if self.auth:
            lines += [
                f"auth_param basic program {NCSA_AUTH} {d}/passwd",
                "auth_param basic children 2 startup=1 idle=1",
                "auth_param basic realm vision-enrich test proxy",
                "acl authed proxy_auth REQUIRED",
                "http_access deny !authed",
            ]
        if self.deny_all:
            lines.append("http_access deny all")
        lines += [
            "http_access deny !to_loopback",
            "http_access deny tunnel !tunnel_ports",
            "http_access allow localhost",
            "http_access deny all",
            *self.extra,
        ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _user() -> pwd.struct_passwd:
        for name in ("proxy", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise RuntimeError("no unprivileged user (proxy, nobody) for squid to run as")

    def start(self) -> "Squid":
        if not os.path.exists(SQUID):
            missing(f"squid is not installed: {INSTALL.format('squid')}")
        if self.auth and not os.path.exists(NCSA_AUTH):
            missing(f"squid's basic_ncsa_auth helper is missing: {INSTALL.format('squid')}")
        # not under a test's tmp_path: squid's unprivileged user must be able to reach it
        self.folder = tempfile.mkdtemp(prefix="squid-")
        os.chmod(self.folder, 0o755)
        if self.auth:
            with open(os.path.join(self.folder, "passwd"), "w") as f:
                f.write(f"{self.auth[0]}:{apr1(self.auth[1])}\n")
        for attempt in range(3):  # a free port can be taken between asking and binding
            self.port = free_port()
            conf = os.path.join(self.folder, "squid.conf")
            with open(conf, "w") as f:
                f.write(self.config())
            if os.geteuid() == 0:
                user = self._user()
                for name in os.listdir(self.folder):
                    os.chown(os.path.join(self.folder, name), user.pw_uid, user.pw_gid)
                os.chown(self.folder, user.pw_uid, user.pw_gid)
            out = open(os.path.join(self.folder, "stderr.log"), "ab")
            self._proc = subprocess.Popen(
                [SQUID, "-N", "-f", conf],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # its helpers go with it, not with the test's group
            )
            out.close()
            try:
                wait_for_port(
                    self.port, self._proc, self.start_timeout, "squid", self.cache_log_path
                )
                return self
            except RuntimeError:
                stop_process(self._proc, signal.SIGTERM)
                if attempt == 2 or "Address already in use" not in tail(self.cache_log_path):
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, signal.SIGTERM)
            self._proc = None
        if self.folder:
            if self.keep_logs_in:
                os.makedirs(self.keep_logs_in, exist_ok=True)
                for name in ("access.log", "cache.log", "stderr.log", "squid.conf"):
                    path = os.path.join(self.folder, name)
                    if os.path.exists(path):
                        shutil.copy(path, self.keep_logs_in)
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = ""

    def __enter__(self) -> "Squid":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
