"""A fault-injection plugin: it prints, logs, hangs, crashes and spawns on request.

``FAULT_MODE`` (from the driver's ``env`` table) picks a misbehaviour at import time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

MODE = os.environ.get("FAULT_MODE", "")

print("print at import")
os.write(1, b"os.write(1) at import\n")

if MODE == "hang_before_handshake":
    sys.stderr.write("about to hang before the handshake\n")
    sys.stderr.flush()
    time.sleep(3600)
if MODE == "die_before_handshake":
    sys.stderr.write("dying before the handshake\n")
    sys.exit(3)

log = logging.getLogger("fault")


class NotFound(Exception):
    pass


def _wire() -> int:
    import __main__

    return int(__main__.WIRE_FD)


class Fault:
    def configure(self, config):
        print("print in configure")
        os.write(1, b"os.write(1) in configure\n")
        self.config = config
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    # -- a valid userprovider ------------------------------------------------------------
    def get_user(self, user_id, skip_fetching_groups=False):
        print("print in a call")
        os.write(1, b"os.write(1) in a call\n")
        if user_id.get("opaque_id") != "fault":
            raise NotFound(user_id.get("opaque_id"))
        return {"id": {"idp": "t", "opaque_id": "fault"}, "username": "fault", "pid": os.getpid()}

    def get_user_by_claim(self, claim, value, skip_fetching_groups=False):
        raise NotFound(value)

    def get_user_groups(self, user_id):
        return []

    def find_users(self, query, skip_fetching_groups=False, context=None):
        if query.startswith("hang:"):  # wait to be cancelled; say so in the marker file
            return self.hang(query[len("hang:") :], context)
        return []

    # -- faults --------------------------------------------------------------------------
    def echo(self, value, delay=0.0):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if delay:
                time.sleep(delay)
            return value
        finally:
            with self.lock:
                self.active -= 1

    def peak(self):
        return self.max_active

    def sleep(self, seconds):
        time.sleep(seconds)
        return "slept"

    def crash(self, code=7, delay=0.0):
        sys.stderr.write("crashing on purpose\n")
        sys.stderr.flush()
        time.sleep(delay)
        os._exit(code)

    def hang(self, marker, context):
        context.cancelled.wait(60)
        with open(marker, "w") as f:
            f.write("cancelled" if context.cancelled.is_set() else "not cancelled")
        return "too late"

    def meta(self, context):
        return {"meta": context.meta, "deadline": context.deadline}

    def spawn_grandchild(self):
        child = subprocess.Popen(["sleep", "300"])
        return child.pid

    def leave_then_crash(self, how, delay=0.3):
        """Leave a process behind (``group``: a child in the plugin's group; ``setsid``: a
        grandchild in a session of its own; ``fork``: a forked copy of the plugin, holding
        whatever it inherited), answer its pid, then die abruptly after ``delay``."""
        if how == "group":
            pid = subprocess.Popen(["sleep", "300"]).pid
        elif how == "setsid":
            read, write = os.pipe()
            if os.fork() == 0:
                os.setsid()
                grandchild = os.fork()
                if grandchild == 0:
                    os.execvp("sleep", ["sleep", "300"])
                os.write(write, str(grandchild).encode())
                os._exit(0)
            pid = int(os.read(read, 32))
        else:
            pid = os.fork()
            if pid == 0:
                time.sleep(300)
                os._exit(0)
        threading.Timer(delay, os._exit, (9,)).start()
        return pid

    def getenv(self, name):
        return os.environ.get(name)

    def log(self, level, message, **fields):
        log.log(logging.getLevelName(level.upper()), message, extra=fields)
        return True

    def big_stderr(self, size):
        sys.stderr.write("B" * size + "\n")
        sys.stderr.write("after the big line\n")
        sys.stderr.flush()
        return True

    def big_result(self, size):
        return "R" * size

    def garbage(self):
        os.write(_wire(), b"\xff\xfe not json at all\n")
        os.write(_wire(), b'{"jsonrpc": "2.0", "id": 999999, "result": 1}\n')
        os.write(_wire(), b"[1, 2, 3]\n")
        return "after garbage"

    def empty_reply(self, context):
        os.write(_wire(), b'{"jsonrpc": "2.0", "id": %d}\n' % context.id)
        return "real reply, too late"
