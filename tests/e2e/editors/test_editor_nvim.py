"""Neovim end to end: the dg_lsp plugin in a real Neovim TUI (tmux) against the real server
with the tiny random-weight checkpoint.

Keystrokes go through ``tmux send-keys`` as a person's would; the test reads the ghost text back
from the extmarks and compares it with what the server answered for that very request.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, python_fixture
from .nvim_driver import TmuxNvim

pytestmark = [pytest.mark.editor, pytest.mark.timeout(420)]

PLUGIN = ROOT / "editors" / "nvim"
SCREENSHOTS = ROOT / "docs" / "screenshots"
# Refresh the committed screenshots only on request (DG_UPDATE_SCREENSHOTS=1).
UPDATE_SCREENSHOTS = os.environ.get("DG_UPDATE_SCREENSHOTS") == "1"

FIXTURE = python_fixture()
SOURCE = FIXTURE.text
LINES = SOURCE.split("\n")[:-1]
RW = FIXTURE.rewrite_line  # 1-based; the range is lines RW and RW + 1

INIT = r"""
vim.opt.rtp:prepend(%(plugin)s)
vim.opt.swapfile = false
vim.opt.number = true
vim.opt.laststatus = 2
vim.opt.termguicolors = true
vim.opt.shortmess:append('I')
vim.opt.statusline = ' %%t %%m%%=%%{v:lua.require("dg_lsp").status()}  %%l:%%c '
vim.cmd('filetype plugin indent on')
vim.cmd('syntax on')
vim.lsp.set_log_level('WARN')

-- Test hooks: every User DgLsp* event, and a Lua evaluator for the driver.
_G.DgTestEvents = {}
vim.api.nvim_create_autocmd('User', {
  pattern = 'DgLsp*',
  callback = function(ev)
    table.insert(_G.DgTestEvents, { pattern = ev.match, data = ev.data })
  end,
})
function _G.DgTestRun(path)
  local ok, res = pcall(dofile, path)
  if not ok then
    res = tostring(res)
  end
  return vim.json.encode({ ok = ok, value = res })
end

_G.DgT = {}
function DgT.state()
  local buf = vim.api.nvim_get_current_buf()
  local s = require('dg_lsp.completion').state[buf] or {}
  local sug = s.suggestion
  local c = vim.api.nvim_win_get_cursor(0)
  return {
    buf = buf,
    mode = vim.api.nvim_get_mode().mode,
    cursor = { c[1] - 1, c[2] },
    lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false),
    version = require('dg_lsp.util').buf_version(buf),
    ghost = require('dg_lsp.ghost').read(buf) or vim.NIL,
    marks = #vim.api.nvim_buf_get_extmarks(buf, require('dg_lsp.ghost').ns, 0, -1, {}),
    suggestion = sug and {
      text = sug.text, row = sug.row, col = sug.col, erow = sug.erow, ecol = sug.ecol,
      request_id = sug.request_id, version = sug.version, draft = sug.draft,
    } or vim.NIL,
    pending = s.request and s.request.id or vim.NIL,
    dropped = s.dropped_drafts or 0,
  }
end
function DgT.events(pattern, request_id)
  local out = {}
  for _, e in ipairs(_G.DgTestEvents) do
    if e.pattern == pattern and (request_id == nil or e.data.request_id == request_id) then
      out[#out + 1] = e.data
    end
  end
  return out
end
function DgT.ready()
  local res = require('dg_lsp').info(0, 3000)
  if res and res.status == 'failed' then
    error('model failed to load: ' .. tostring(res.error))
  end
  return res and res.status == 'ready' or false
end

-- A trace of what the plugin did, dumped to the artifacts after the run.
_G.DgTrace = {}
local function trace(msg)
  table.insert(DgTrace, string.format('%%.3f %%s', vim.uv.hrtime() / 1e9, msg))
end
do
  local c = require('dg_lsp.completion')
  local on_event, trigger = c.on_event, c.trigger
  c.on_event = function(b, ev)
    trace(('event %%s tick %%d v%%d'):format(ev, vim.api.nvim_buf_get_changedtick(b), require('dg_lsp.util').buf_version(b)))
    return on_event(b, ev)
  end
  c.trigger = function(kind)
    local r = trigger(kind)
    local s = c.state[vim.api.nvim_get_current_buf()] or {}
    trace(('trigger %%s id %%s v%%s'):format(tostring(kind), tostring(s.request and s.request.id), tostring(s.request and s.request.version)))
    return r
  end
  vim.api.nvim_create_autocmd('User', { pattern = 'DgLsp*', callback = function(ev)
    trace(ev.match .. ' ' .. vim.json.encode(ev.data))
  end })
end

require('dg_lsp').setup({
  cmd = %(cmd)s,
  model = %(model)s,
  completion = { parseCheck = false, seed = 0 },
  keymaps = true,
})
"""


def lua_str(s: str) -> str:
    return json.dumps(s)


def lua_list(xs: list[str]) -> str:
    return "{" + ", ".join(lua_str(x) for x in xs) + "}"


@pytest.fixture(scope="module")
def nvim(
    tmp_path_factory: pytest.TempPathFactory,
    nvim_bin: str,
    server_cmd: list[str],
    tiny_model_dir: Path,
    artifacts_dir: Path,
) -> Any:
    if shutil.which("tmux") is None:
        from .conftest import missing

        missing("tmux is not installed")
    work = tmp_path_factory.mktemp("nvim")
    (work / ".git").mkdir()
    log = artifacts_dir / "nvim-server.log"
    log.unlink(missing_ok=True)
    cmd = [*server_cmd, "--log-file", str(log)]
    init = work / "init.lua"
    init.write_text(
        INIT % {"plugin": lua_str(str(PLUGIN)), "cmd": lua_list(cmd), "model": lua_str(str(tiny_model_dir))},
        encoding="utf-8",
    )
    xdg = work / "xdg"
    env = {f"XDG_{k}_HOME": str(xdg / k.lower()) for k in ("CONFIG", "DATA", "STATE", "CACHE")}
    (work / FIXTURE.name).write_text(SOURCE, encoding="utf-8")
    ed = TmuxNvim(nvim_bin, work, init, env=env)
    ed.start(work / FIXTURE.name)
    try:
        ed.wait_for("return DgT.ready()", 180, "the server to load the model", interval=0.5)
        yield ed
    finally:
        ed.save_screen(artifacts_dir, "nvim-last")
        try:
            (artifacts_dir / "nvim-trace.txt").write_text("\n".join(ed.lua("return DgTrace")), encoding="utf-8")
        except Exception:
            pass
        ed.stop()


def open_file(ed: TmuxNvim, name: str, text: str) -> Path:
    path = ed.workdir / name
    path.write_text(text, encoding="utf-8")
    ed.keys("Escape")
    ed.type(f":edit! {path}")
    ed.keys("Enter")
    ed.wait_for(
        f"return vim.api.nvim_buf_get_name(0) == {lua_str(str(path))} and #vim.lsp.get_clients({{bufnr = 0, name = 'dg_lsp'}}) == 1",
        20,
        f"{name} to open with the client attached",
    )
    return path


def state(ed: TmuxNvim) -> dict[str, Any]:
    return ed.lua("return DgT.state()")  # type: ignore[no-any-return]


def eol(text: str) -> str:
    """LSP line breaks as \\n (clients apply \\r\\n and a lone \\r as line breaks)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def printable(text: str) -> str:
    """Control characters (except tab and newline) in caret notation, as the plugin shows them."""
    return "".join(
        "^" + chr((ord(c) + 64) % 128) if (ord(c) < 32 and c not in "\t\n") or ord(c) == 127 else c for c in text
    )


def expected_display(lines: list[str], item: dict[str, Any]) -> str:
    """The ghost text the plugin must show for a server item (ASCII buffer)."""
    return printable(_expected_display(lines, item))


def _expected_display(lines: list[str], item: dict[str, Any]) -> str:
    text = eol(item["insertText"])
    r = item["range"]
    s, e = r["start"], r["end"]
    if (s["line"], s["character"]) == (e["line"], e["character"]):
        return text
    buf = "\n".join(lines)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    replaced = buf[offsets[s["line"]] + s["character"] : offsets[e["line"]] + e["character"]]
    if replaced and text.endswith(replaced):
        return text[: len(text) - len(replaced)]
    return text


def apply_item(lines: list[str], item: dict[str, Any]) -> list[str]:
    r = item["range"]
    s, e = r["start"], r["end"]
    buf = "\n".join(lines)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    a = offsets[s["line"]] + s["character"]
    b = offsets[e["line"]] + e["character"]
    return (buf[:a] + eol(item["insertText"]) + buf[b:]).split("\n")


def wait_for_suggestion(ed: TmuxNvim, timeout: float = 90) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Wait for a final (non-draft) suggestion and return (editor state, server item); None when
    the server answered the current buffer version with nothing to show."""

    def settled() -> Any:
        # One atomic look: the suggestion, or the answer event for the current version.
        got = ed.lua(
            """
            local s = DgT.state()
            if s.suggestion ~= vim.NIL and not s.suggestion.draft then return { 'shown', s } end
            local e = DgT.events('DgLspCompletion')
            local last = e[#e]
            if last and last.error then return { 'error', last.error } end
            if last and last.version == s.version and s.pending == vim.NIL then return { 'empty', s } end
            return false
            """
        )
        if got and got[0] == "error":
            raise AssertionError(f"inlineCompletion failed: {got[1]}")
        return got

    kind, st = ed.wait(settled, timeout, "an answer to the inline completion request")
    if kind == "empty":
        return None
    rid = st["suggestion"]["request_id"]
    events = ed.lua(f"return DgT.events('DgLspCompletion', {rid})")
    assert len(events) == 1, events
    result = events[0]["result"]
    items = result["items"] if isinstance(result, dict) else result
    item = next(i for i in items if i["insertText"])
    return st, item


def type_until_suggestion(ed: TmuxNvim, chars: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait for the automatic request of the fresh line, then type `chars` one by one (as a
    person would) until the server offers something (the random model often offers nothing)."""
    got = wait_for_suggestion(ed)
    if got is not None:
        return got
    for ch in chars:
        ed.type(ch)
        # Let the keystroke reach Neovim before looking at the answer for it.
        ed.wait(lambda: state(ed)["lines"][-1].endswith(ch), 10, f"{ch!r} typed")
        got = wait_for_suggestion(ed)
        if got is not None:
            return got
    raise AssertionError(f"the server offered nothing after typing {chars!r}")


def test_ghost_text_matches_server_answer_and_accepts(nvim: TmuxNvim, artifacts_dir: Path) -> None:
    ed = nvim
    path = open_file(ed, FIXTURE.name, SOURCE)
    # Last line, then `o`: a new indented line in insert mode; type there.
    ed.keys("G", "o")
    ed.wait_for("return vim.api.nvim_get_mode().mode == 'i'", 10, "insert mode")
    st, item = type_until_suggestion(ed, "return total")

    ghost = st["ghost"]
    assert ghost, "no ghost text extmark"
    sug = st["suggestion"]
    # The extmark sits at the cursor and shows exactly what the server answered.
    assert [ghost["row"], ghost["col"]] == st["cursor"] == [sug["row"], sug["col"]]
    assert ghost["hl"] == "DgLspGhost"
    assert sug["text"] == eol(item["insertText"])
    assert ghost["text"] == expected_display(st["lines"], item)
    assert item["range"]["start"] == {"line": st["cursor"][0], "character": st["cursor"][1]}
    assert sug["version"] == st["version"]

    # A second, direct request for the same position gets the same answer (seeded decoding).
    direct = ed.lua(
        """
        local c = vim.lsp.get_clients({ bufnr = 0, name = 'dg_lsp' })[1]
        local params = vim.lsp.util.make_position_params(0, c.offset_encoding)
        local r = c:request_sync('textDocument/inlineCompletion',
          vim.tbl_extend('force', params, { context = { triggerKind = 1 } }), 60000, 0)
        return r and r.result or vim.NIL
        """
    )
    assert direct and direct["items"][0]["insertText"] == item["insertText"]
    # ... and that request's drafts did not disturb the shown suggestion.
    assert state(ed)["ghost"] == ghost

    png = ed.save_screen(artifacts_dir, "nvim-ghost-text", title="Neovim: dg_lsp ghost text")
    if png is not None and UPDATE_SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, SCREENSHOTS / "nvim-ghost-text.png")

    before = st["lines"]
    ed.keys("M-l")  # default accept keymap
    expected = apply_item(before, item)
    ed.wait(lambda: state(ed)["lines"] == expected, 10, "the accepted text in the buffer")
    after = state(ed)
    # The cursor ends after the inserted text; the old ghost is gone.
    assert after["ghost"] is None or after["suggestion"] is None or after["suggestion"]["request_id"] != sug["request_id"]
    ed.keys("Escape")
    ed.type(":w")
    ed.keys("Enter")
    ed.wait(lambda: path.read_bytes().decode("utf-8") == "\n".join(expected) + "\n", 10, "the file on disk")


def server_info(ed: TmuxNvim) -> dict[str, Any]:
    """The server's ``dg.info`` through the plugin."""
    return ed.lua("return require('dg_lsp').info(0, 3000)")  # type: ignore[no-any-return]


@contextlib.contextmanager
def speculation(ed: TmuxNvim, on: bool) -> Iterator[None]:
    """``completion.speculate`` set through the plugin (``update``: didChangeConfiguration) for the block, then unset
    again: the plugin's default, which sends true while it triggers automatically."""

    def set_to(value: bool | None) -> None:
        lua_value = "nil" if value is None else str(value).lower()
        ed.lua(f"require('dg_lsp.config').options.completion.speculate = {lua_value}; require('dg_lsp').update({{}}); return true")
        sent = True if value is None else value
        ed.wait(lambda: server_info(ed)["options"]["completion"]["speculate"] is sent, 10, f"speculate={sent} on the server")

    set_to(on)
    try:
        yield
    finally:
        set_to(None)


def test_keystroke_during_denoising_drops_stale_draft(nvim: TmuxNvim, artifacts_dir: Path) -> None:
    with speculation(nvim, False):  # the request must denoise itself: a speculation could answer it at once
        keystroke_during_denoising_drops_stale_draft(nvim, artifacts_dir)


def keystroke_during_denoising_drops_stale_draft(ed: TmuxNvim, artifacts_dir: Path) -> None:
    open_file(ed, "stale.py", SOURCE)
    ed.keys("G", "o")
    ed.wait_for("return vim.api.nvim_get_mode().mode == 'i'", 10, "insert mode")
    ed.type("x = ")
    ed.wait(lambda: state(ed)["lines"][-1].endswith("x = "), 10, "the typed text")
    # When a draft of the live request is on screen, type a key (a real key press in Neovim's
    # input queue), exactly while the server is still denoising.
    ed.lua(
        """
        _G.DgStale = {}
        vim.api.nvim_create_autocmd('User', { pattern = 'DgLspDraft', callback = function(ev)
          if DgStale.done or ev.data.final then return end
          local g = require('dg_lsp.ghost').read(ev.data.bufnr)
          if not g or g.text == '' then return end
          DgStale = { done = true, request_id = ev.data.request_id, text = g.text, step = ev.data.step,
                      max_steps = ev.data.max_steps }
          vim.api.nvim_input('z')
          return true -- one shot
        end })
        return true
        """
    )
    stale = ed.wait_for("return DgStale.done and DgStale or false", 90, "a draft on screen while denoising")
    assert stale["step"] < stale["max_steps"]
    ed.wait(lambda: state(ed)["lines"][-1].endswith("x = z"), 10, "the key typed during denoising")
    st = state(ed)
    assert st["pending"] != stale["request_id"]  # the old request was cancelled

    # From the key press on, the old request's drafts and answer must never be on screen.
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        st = state(ed)
        if st["ghost"]:
            assert st["ghost"]["text"] != stale["text"], "a stale draft is still shown"
            assert st["suggestion"]["request_id"] != stale["request_id"]
            assert st["suggestion"]["version"] == st["version"]
        time.sleep(0.1)
    # No answer of the old request was taken.
    assert ed.lua(f"return #DgT.events('DgLspCompletion', {stale['request_id']})") == 0
    ed.save_screen(artifacts_dir, "nvim-after-stale-draft")
    ed.keys("Escape")


def test_a_keystroke_prefetches_the_prompt_its_request_reuses(nvim: TmuxNvim) -> None:
    with speculation(nvim, False):  # the prompt prefetch alone
        a_keystroke_prefetches_the_prompt_its_request_reuses(nvim)


def a_keystroke_prefetches_the_prompt_its_request_reuses(ed: TmuxNvim) -> None:
    open_file(ed, "prefetch.py", SOURCE)
    ed.keys("G", "o")
    ed.wait_for("return vim.api.nvim_get_mode().mode == 'i'", 10, "insert mode")
    wait_for_suggestion(ed)  # the fresh line's own request is answered first

    def server() -> dict[str, Any]:
        return server_info(ed)

    for key in "xyz":  # a key the shown suggestion began with would be answered without the model: try another
        before = server()
        ed.type(key)
        after = ed.wait(
            lambda: (s := server())["jobs"]["completed"] + s["typeThroughHits"]
            > before["jobs"]["completed"] + before["typeThroughHits"]
            and s,
            60,
            f"the debounced request after typing {key!r}",
        )
        if after["typeThroughHits"] == before["typeThroughHits"]:
            break
    # The plugin's change notification (batched, 50 ms) reached the server before its request
    # (150 ms debounce): the prompt was encoded in between and the request reused all of it.
    assert after["prefetch"]["encoded"] > before["prefetch"]["encoded"], after["prefetch"]
    assert after["promptCache"]["last"]["encodedTokens"] == 0, after["promptCache"]
    ed.keys("Escape")


def test_the_plugin_speculates_so_the_request_after_a_keystroke_finds_its_answer(nvim: TmuxNvim) -> None:
    ed = nvim
    # Not set in this session's setup(): the plugin sends speculate=true because it triggers automatically,
    # its changes at most 20 ms after a key and its request 100 ms after the last one.
    assert ed.lua("return require('dg_lsp.config').options.completion.speculate == nil")
    assert ed.lua(
        "local c = vim.lsp.get_clients({ name = 'dg_lsp' })[1]; "
        "return { c.flags.debounce_text_changes, require('dg_lsp.config').options.debounce_ms }"
    ) == [20, 100]
    assert server_info(ed)["options"]["completion"]["speculate"] is True
    open_file(ed, "speculate.py", SOURCE)
    ed.keys("G", "o")
    ed.wait_for("return vim.api.nvim_get_mode().mode == 'i'", 10, "insert mode")
    wait_for_suggestion(ed)
    for key in "xyz":  # a key the shown suggestion began with would be typed through: try another
        before = server_info(ed)
        ed.type(key)
        ed.wait(lambda: state(ed)["lines"][-1].endswith(key), 10, f"{key!r} typed")
        version = state(ed)["version"]
        # The plugin's request (150 ms after the key) is answered for this version ...
        ed.wait(
            lambda: ed.lua(
                f"local e = DgT.events('DgLspCompletion'); local last = e[#e]; return last ~= nil and last.version == {version}"
            ),
            60,
            f"the debounced request after typing {key!r}",
        )
        after = server_info(ed)
        if after["typeThroughHits"] == before["typeThroughHits"]:
            break
    # ... by the speculation the key's change started (joined, or its remembered answer), not by a job of its own.
    assert after["prefetch"]["encoded"] > before["prefetch"]["encoded"], after["prefetch"]
    assert after["jobs"]["completed"] == before["jobs"]["completed"], after["jobs"]
    assert after["cacheHits"] > before["cacheHits"] or after["prefetch"]["joined"] > before["prefetch"]["joined"], after
    ed.keys("Escape")


def test_rewrite_preview_and_accept(nvim: TmuxNvim, artifacts_dir: Path) -> None:
    ed = nvim
    path = open_file(ed, "rewrite.py", SOURCE)
    # Select two whole lines (a def and its body) linewise and rewrite them.
    ed.keys(*str(RW), "G", "V", "j")
    ed.type(":DgRewrite")
    ed.keys("Enter")
    proposal = ed.wait_for(
        "local p = require('dg_lsp.rewrite').pending[vim.api.nvim_get_current_buf()]; "
        "return p and p.result and { result = p.result, win = p.win, "
        "float = vim.api.nvim_buf_get_lines(p.buf, 0, -1, false) } or false",
        120,
        "the rewrite proposal",
    )
    result = proposal["result"]
    assert result["range"] == {"start": {"line": RW - 1, "character": 0}, "end": {"line": RW, "character": len(LINES[RW])}}
    assert isinstance(result["text"], str)
    assert result["applied"] is False  # apply=false: the server only proposed
    float_lines = proposal["float"]
    new_lines = eol(result["text"]).split("\n")
    old_lines = LINES[RW - 1 : RW + 1]
    if new_lines != old_lines:
        plus = [line[1:] for line in float_lines if line.startswith("+") and not line.startswith("+++")]
        minus = [line[1:] for line in float_lines if line.startswith("-") and not line.startswith("---")]
        # The float shows the lines as Neovim would (control characters in caret notation).
        assert plus and all(p in [printable(n) for n in new_lines] for p in plus), float_lines
        assert all(m in old_lines for m in minus), float_lines
    png = ed.save_screen(artifacts_dir, "nvim-rewrite-preview", title="Neovim: :DgRewrite diff preview")
    if png is not None and UPDATE_SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, SCREENSHOTS / "nvim-rewrite-preview.png")

    ed.type(":DgRewriteAccept")
    ed.keys("Enter")
    expected = list(LINES)
    expected[RW - 1 : RW + 1] = new_lines
    try:
        ed.wait(lambda: state(ed)["lines"] == expected, 10, "the rewrite in the buffer")
    except Exception:
        got = state(ed)["lines"]
        raise AssertionError(f"buffer {len(got)} lines vs expected {len(expected)}: " + "; ".join(
            f"{i}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(got, expected)) if a != b)) from None
    assert ed.lua("return next(require('dg_lsp.rewrite').pending) == nil")
    assert ed.lua("return #vim.api.nvim_tabpage_list_wins(0)") == 1  # preview closed
    ed.type(":w")
    ed.keys("Enter")
    ed.wait(lambda: path.read_bytes().decode("utf-8") == "\n".join(expected) + "\n", 10, "the file on disk")


def test_rewrite_proposal_dropped_when_buffer_changes(nvim: TmuxNvim) -> None:
    ed = nvim
    open_file(ed, "rewrite2.py", SOURCE)
    ed.keys(*str(RW), "G", "V", "j")
    ed.type(":DgRewrite")
    ed.keys("Enter")
    ed.wait_for(
        "local p = require('dg_lsp.rewrite').pending[vim.api.nvim_get_current_buf()]; return p and p.result ~= nil",
        120,
        "the rewrite proposal",
    )
    # Edit the buffer: the proposal is for an older version and must not be applied.
    ed.keys("g", "g", "A")
    ed.type("  # edited")
    ed.keys("Escape")
    ed.wait_for("return next(require('dg_lsp.rewrite').pending) == nil", 10, "the proposal to be dropped")
    ed.type(":DgRewriteAccept")
    ed.keys("Enter")
    time.sleep(0.3)
    lines = state(ed)["lines"]
    expected = list(LINES)
    expected[0] += "  # edited"
    assert lines == expected


def test_checkhealth(nvim: TmuxNvim) -> None:
    ed = nvim
    open_file(ed, FIXTURE.name, SOURCE)
    ed.type(":checkhealth dg_lsp")
    ed.keys("Enter")
    text = ed.wait_for(
        "local l = vim.api.nvim_buf_get_lines(0, 0, -1, false); local t = table.concat(l, '\\n'); "
        "return t:find('round trip', 1, true) and t or false",
        30,
        "the health report",
    )
    assert "ERROR" not in text, text
    assert "status ready" in text
    assert "server executable" in text
    assert "timing: changes sent within 20 ms of a key, request 100 ms after the last key" in text
    assert "speculation: on" in text and "server: prefetch true, speculate true" in text
    ed.type(":bwipeout")
    ed.keys("Enter")
