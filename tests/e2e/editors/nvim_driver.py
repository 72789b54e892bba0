"""Drive a real Neovim TUI running in tmux: keystrokes through ``tmux send-keys``, state read
back through Neovim's RPC socket (``nvim --server SOCK --remote-expr``), screen through
``tmux capture-pane``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable


class NvimError(RuntimeError):
    pass


class TmuxNvim:
    def __init__(
        self,
        nvim: str,
        workdir: Path,
        init_lua: Path,
        env: dict[str, str] | None = None,
        size: tuple[int, int] = (110, 32),
    ) -> None:
        self.nvim = nvim
        self.workdir = workdir
        self.init_lua = init_lua
        self.env = {**os.environ, **(env or {})}
        self.size = size
        self.tmux_socket = f"dg-e2e-{uuid.uuid4().hex[:8]}"
        self.session = "dg"
        self.sock = str(workdir / "nvim.sock")
        self._evals = 0

    # -- lifecycle ------------------------------------------------------------------------
    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.tmux_socket, "-f", "/dev/null", *args],
            check=check,
            capture_output=True,
            text=True,
            env=self.env,
        )

    def start(self, file: Path | None = None, timeout: float = 20.0) -> None:
        if shutil.which("tmux") is None:
            raise NvimError("tmux is not installed")
        cmd = [self.nvim, "-u", str(self.init_lua), "-i", "NONE", "--listen", self.sock]
        if file is not None:
            cmd.append(str(file))
        w, h = self.size
        self.tmux(
            "new-session", "-d", "-s", self.session, "-x", str(w), "-y", str(h), "-c", str(self.workdir),
            "-e", "TERM=tmux-256color", *cmd,
        )
        self.tmux("set-option", "-t", self.session, "status", "off")
        self.tmux("set-option", "-g", "escape-time", "0")
        self.tmux("set-option", "-sa", "terminal-features", ",*:RGB")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if Path(self.sock).exists():
                try:
                    if self.lua("return 1") == 1:
                        return
                except NvimError:
                    pass
            time.sleep(0.1)
        raise NvimError(f"nvim did not start; screen:\n{self.screen()}")

    def stop(self) -> None:
        try:
            self.tmux("send-keys", "-t", self.session, "Escape", check=False)
            self.remote_send("<C-\\><C-n>:qa!<CR>")
            time.sleep(0.3)
        except Exception:
            pass
        self.tmux("kill-server", check=False)

    # -- input ----------------------------------------------------------------------------
    def keys(self, *keys: str) -> None:
        """tmux key names: 'Escape', 'Enter', 'M-l', 'C-]', ..."""
        self.tmux("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        """Literal text, as typed."""
        self.tmux("send-keys", "-t", self.session, "-l", text)

    def remote_send(self, keys: str) -> None:
        subprocess.run(
            [self.nvim, "--headless", "--server", self.sock, "--remote-send", keys],
            check=False,
            capture_output=True,
            env=self.env,
            timeout=10,
        )

    # -- state ----------------------------------------------------------------------------
    def lua(self, code: str) -> Any:
        """Run Lua in the editor and return its result (JSON round trip)."""
        self._evals += 1
        path = self.workdir / f".eval{self._evals % 4}.lua"
        path.write_text(code, encoding="utf-8")
        try:
            proc = subprocess.run(
                [self.nvim, "--headless", "--server", self.sock, "--remote-expr", f"luaeval('DgTestRun(_A)', '{path}')"],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=30,
            )
        except subprocess.TimeoutExpired:
            raise NvimError(f"Neovim did not answer (a prompt?); screen:\n{self.screen()}") from None
        out = proc.stdout.strip()
        if proc.returncode != 0 or not out:
            raise NvimError(f"remote-expr failed (rc {proc.returncode}): {proc.stderr.strip()} {out}")
        res = json.loads(out)
        if not res["ok"]:
            raise NvimError(f"lua error: {res['value']}")
        return res["value"]

    def wait_for(self, code: str, timeout: float, what: str, interval: float = 0.05) -> Any:
        """Poll Lua `code` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.lua(code)
            if last:
                return last
            time.sleep(interval)
        raise NvimError(f"timed out waiting for {what} (last: {last!r}); screen:\n{self.screen()}")

    def wait(self, pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(interval)
        raise NvimError(f"timed out waiting for {what}; screen:\n{self.screen()}")

    def screen(self, ansi: bool = False) -> str:
        args = ["capture-pane", "-p", "-t", self.session]
        if ansi:
            args.insert(1, "-e")
        return self.tmux(*args, check=False).stdout

    def save_screen(self, directory: Path, name: str, title: str | None = None) -> Path | None:
        """Save the screen as .txt, .ansi and (with Pillow) .png; returns the PNG path."""
        directory.mkdir(parents=True, exist_ok=True)
        try:
            # A full redraw first: incremental redraws of the random model's odd characters
            # (combining/ambiguous-width) can leave tmux's copy of the screen out of step.
            self.lua("vim.cmd('redraw!') return true")
            time.sleep(0.2)
        except NvimError:
            pass
        (directory / f"{name}.txt").write_text(self.screen(), encoding="utf-8")
        ansi = self.screen(ansi=True)
        (directory / f"{name}.ansi").write_text(ansi, encoding="utf-8")
        try:
            from .ansi_png import render
        except ImportError:  # pragma: no cover
            return None
        try:
            cur = self.tmux("display-message", "-p", "-t", self.session, "#{cursor_x} #{cursor_y}", check=False)
            cursor = tuple(int(v) for v in cur.stdout.split()) if cur.returncode == 0 else None
            return render(ansi, directory / f"{name}.png", cols=self.size[0], title=title, cursor=cursor)
        except ImportError:
            return None
