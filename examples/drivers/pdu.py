#!/usr/bin/env python3
r"""An external rackhand driver for a PDU (or any simple CLI box) reached over Telnet.

Why this exists: some gear needs a dialogue rackhand's built-in drivers do not know (a PDU
menu, a UPS card), and such code should not run inside the agent. A device with
`driver_exec = "/path/to/pdu.py"` runs this program in a child process instead; rackhand
sends one JSON request line on stdin and reads JSON lines back on stdout (the protocol is in
docs/driver-protocol.md). Python 3 standard library only (telnetlib left the standard
library in 3.13, so the few Telnet rules needed are here).

What it does: connect, answer the username/password prompts, wait for the device's `prompt`
regex (optional: without one, a line ending in `>`, `#`, `$` or `%`), run each command, and
report one outcome per command as soon as it is done, then `done`. Diagnostics go to stderr,
which rackhand logs under the device's name.
The `prompt` regex is compiled with Python's `re`: keep it to the syntax both Rust's regex
and Python share (classes, anchors, `\s`, `\$`), as in the example below.

Config (a device with `driver_exec` needs no `platform`; rackhand only passes it on):
    [[device]]
    name = "pdu1"
    transport = "telnet"
    host = "10.0.0.9"
    prompt = '^apc>\s*$'
    driver_exec = "/usr/local/lib/rackhand/pdu.py"
    commands = ["olStatus all"]
"""

import base64
import json
import re
import socket
import sys
import time

PROTOCOL_VERSION = 1

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
ECHO, SGA = 1, 3

USERNAME = re.compile(r"(user ?name|login)\s*:\s*$", re.IGNORECASE)
PASSWORD = re.compile(r"password\s*:\s*$", re.IGNORECASE)
LOGIN_FAILED = re.compile(r"(incorrect|invalid|failed|denied)", re.IGNORECASE)
COMMAND_ERROR = re.compile(
    r"(command not found|invalid command|unknown command|^error[: ])", re.IGNORECASE
)
# Bounds the login dialogue: a device that keeps asking is not logging us in.
MAX_LOGIN_STEPS = 12


def log(device, message):
    # `<6>`: informational (syslog priority); rackhand logs unprefixed stderr as warnings.
    print(f"<6>pdu.py: {device}: {message}", file=sys.stderr, flush=True)


def emit(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def outcome(command, status, error, output, started, elapsed):
    message = {
        "type": "outcome",
        "command": command,
        "status": status,
        "error": error,
        "started_at_ms": int(started * 1000),
        "duration_ms": int(elapsed * 1000),
    }
    try:
        message["output"] = output.decode("utf-8")
    except UnicodeDecodeError:
        message["output_base64"] = base64.b64encode(output).decode("ascii")
    emit(message)


class Timeout(Exception):
    pass


class Closed(Exception):
    pass


class TooLarge(Exception):
    pass


class Telnet:
    """Just enough Telnet: strip option negotiation, let the server echo, refuse the rest."""

    def __init__(self, host, port, deadline):
        left = max(deadline - time.monotonic(), 0.001)
        self.sock = socket.create_connection((host, port), timeout=left)
        self.pending = b""  # undecoded bytes (an IAC sequence split across reads)

    def send(self, data):
        self.sock.sendall(data.replace(bytes([IAC]), bytes([IAC, IAC])))

    def recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout()
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout() from None
        except OSError as e:
            raise Closed(str(e)) from None
        if not chunk:
            raise Closed("the device closed the connection")
        return self._decode(self.pending + chunk)

    def _decode(self, data):
        out = bytearray()
        i = 0
        self.pending = b""
        while i < len(data):
            b = data[i]
            if b != IAC:
                out.append(b)
                i += 1
                continue
            if i + 1 >= len(data):
                self.pending = data[i:]
                break
            verb = data[i + 1]
            if verb == IAC:
                out.append(IAC)
                i += 2
            elif verb in (DO, DONT, WILL, WONT):
                if i + 2 >= len(data):
                    self.pending = data[i:]
                    break
                option = data[i + 2]
                if verb == WILL:
                    answer = DO if option in (ECHO, SGA) else DONT
                    self.sock.sendall(bytes([IAC, answer, option]))
                elif verb == DO:
                    answer = WILL if option == SGA else WONT
                    self.sock.sendall(bytes([IAC, answer, option]))
                i += 3
            elif verb == SB:
                end = data.find(bytes([IAC, SE]), i + 2)
                if end < 0:
                    self.pending = data[i:]
                    break
                i = end + 2
            else:
                i += 2
        return bytes(out)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def last_line(buf):
    text = buf.decode("utf-8", "replace")
    return text.rsplit("\n", 1)[-1].replace("\r", "")


def wait_for(conn, buf, patterns, deadline, limit):
    """Reads until one of `patterns` matches the unfinished last line; returns (index, buf)."""
    while True:
        tail = last_line(buf)
        for index, pattern in enumerate(patterns):
            if pattern.search(tail):
                return index, buf
        if len(buf) > limit:
            raise TooLarge()
        buf += conn.recv(deadline)


def login(conn, device, prompt, deadline):
    buf = b""
    passwords = 0
    for _ in range(MAX_LOGIN_STEPS):
        index, buf = wait_for(
            conn, buf, [prompt, USERNAME, PASSWORD], deadline, 1 << 20
        )
        if index == 0:
            if passwords and LOGIN_FAILED.search(buf.decode("utf-8", "replace")):
                raise PermissionError("the device said the login failed")
            return
        if passwords:
            raise PermissionError("the device asked again after the password")
        if index == 1:
            user = device.get("username")
            if not user:
                raise PermissionError("the device asks for a username; set `username`")
            conn.send(user.encode() + b"\r")
        else:
            secret = device.get("password") or {}
            if secret.get("value") is None:
                where = secret.get("source", "the config")
                raise PermissionError(f"no password (from {where}) to answer with")
            conn.send(secret["value"].encode() + b"\r")
            passwords += 1
        buf = b""
    raise PermissionError("the login dialogue did not end")


def clean(raw, command):
    """The output as the device printed it: no echo, no prompt line, `\\n` line ends."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"")
    lines = text.split(b"\n")
    if lines and lines[0].strip() == command.encode().strip():
        lines = lines[1:]
    # The last element is the prompt line (without its line end).
    return b"\n".join(lines[:-1]) + (b"\n" if len(lines) > 1 else b"")


def run(request):
    device = request["device"]
    commands = request["commands"]
    name = device["name"]
    connect_timeout = device["connect_timeout_ms"] / 1000
    command_timeout = device["command_timeout_ms"] / 1000
    max_output = device["max_output"]
    answered = 0

    def fail_rest(status, error):
        for command in commands[answered:]:
            outcome(command, status, error, b"", time.time(), 0)

    if device["transport"] != "telnet":
        fail_rest("connect_failed", f"{name}: pdu.py speaks Telnet only, not {device['transport']}")
        return
    prompt = re.compile(device.get("prompt") or r"[>#$%]\s?$")
    started = time.time()
    try:
        conn = Telnet(device["host"], device["port"], time.monotonic() + connect_timeout)
        login(conn, device, prompt, time.monotonic() + connect_timeout)
    except (Timeout, TooLarge):
        fail_rest("timeout", f"{name}: no prompt within connect_timeout ({connect_timeout:g} s)")
        return
    except PermissionError as e:
        fail_rest("auth_failed", f"{name}: login refused: {e}")
        return
    except (OSError, Closed) as e:
        fail_rest("connect_failed", f"{name} ({device['host']}:{device['port']}): {e}")
        return
    log(name, f"logged in after {time.time() - started:.2f} s")

    for command in commands:
        started = time.time()
        t0 = time.monotonic()
        conn.send(command.encode() + b"\r")
        try:
            _, raw = wait_for(conn, b"", [prompt], t0 + command_timeout, max_output + 4096)
        except Timeout:
            outcome(command, "timeout", f"{name}: no prompt within command_timeout ({command_timeout:g} s)",
                    b"", started, time.monotonic() - t0)
            answered += 1
            fail_rest("timeout", f"{name}: not run: the session hung on an earlier command")
            conn.close()
            return
        except TooLarge:
            outcome(command, "output_too_large", f"{name}: more than max_output ({max_output} bytes)",
                    b"", started, time.monotonic() - t0)
            answered += 1
            fail_rest("disconnected", f"{name}: not run: the session was left mid-output")
            conn.close()
            return
        except Closed as e:
            outcome(command, "disconnected", f"{name}: {e}", b"", started, time.monotonic() - t0)
            answered += 1
            fail_rest("disconnected", f"{name}: not run: the connection was gone")
            return
        output = clean(raw, command)[:max_output]
        first = output.decode("utf-8", "replace").strip().split("\n", 1)[0]
        if COMMAND_ERROR.search(first):
            outcome(command, "command_error", f"{name} rejected `{command}`: {first}",
                    output, started, time.monotonic() - t0)
        else:
            outcome(command, "ok", None, output, started, time.monotonic() - t0)
        answered += 1

    try:
        conn.send(b"exit\r")
    except OSError:
        pass
    conn.close()


def main():
    line = sys.stdin.readline()
    if not line:
        print("pdu.py: no request on stdin; this program is run by rackhand (driver_exec)", file=sys.stderr)
        return 2
    request = json.loads(line)
    if request.get("version") != PROTOCOL_VERSION:
        print(f"pdu.py: protocol version {request.get('version')} is not {PROTOCOL_VERSION}", file=sys.stderr)
        return 2
    run(request)
    emit({"type": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
