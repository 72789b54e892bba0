--- Inline completion: requests, live drafts, ghost text, accept/dismiss.
---
--- A suggestion (or a draft of one) is only shown while the buffer, its LSP version and the
--- cursor are exactly those of the request it answers; anything else is dropped.
local M = {}

local api = vim.api
local util = require('dg_lsp.util')
local ghost = require('dg_lsp.ghost')
local config = require('dg_lsp.config')

---@class dg_lsp.Request
---@field id integer?          JSON-RPC id (also dg/draft's requestId)
---@field client_id integer
---@field version integer      LSP document version the request was made at
---@field row integer          cursor (0-based row, byte col)
---@field col integer
---@field mode string          mode at request time ("i" or "n")
---@field kind string          "invoked" | "automatic"
---@field t0 number            hrtime at send

---@class dg_lsp.Suggestion
---@field text string          insertText
---@field row integer          range start (the cursor)
---@field col integer
---@field erow integer         range end
---@field ecol integer
---@field request_id integer
---@field version integer
---@field draft boolean        true for a dg/draft preview (cannot be accepted)
---@field step integer?
---@field max_steps integer?
---@field final boolean?
---@field end_mark integer?    extmark tracking the range end (kept across a partial accept)

---@class dg_lsp.BufState
---@field request dg_lsp.Request?
---@field suggestion dg_lsp.Suggestion?
---@field timer uv.uv_timer_t?
---@field expect {tick: integer, row: integer, col: integer}?
---@field dropped_drafts integer
---@field last_latency_ms number?

---@type table<integer, dg_lsp.BufState>
M.state = {}

local track_ns = api.nvim_create_namespace('dg_lsp_track')

local function st(bufnr)
  local s = M.state[bufnr]
  if not s then
    s = { dropped_drafts = 0 }
    M.state[bufnr] = s
  end
  return s
end

function M.get_client(bufnr)
  for _, c in ipairs(util.get_clients({ bufnr = bufnr, name = 'dg_lsp' })) do
    if not util.is_stopped(c) then
      return c
    end
  end
end

local function mode_class()
  local m = api.nvim_get_mode().mode
  if m:sub(1, 1) == 'i' then
    return 'i'
  end
  return 'n'
end

local function emit(pattern, data)
  api.nvim_exec_autocmds('User', { pattern = pattern, modeline = false, data = data })
end

--- Is `req` still the live request for `bufnr` and does the editor still look like it did
--- when it was made (same buffer in the window, same version, same cursor)?
local function still_current(bufnr, req)
  local s = M.state[bufnr]
  if not s or s.request ~= req then
    return false
  end
  if not api.nvim_buf_is_valid(bufnr) or api.nvim_get_current_buf() ~= bufnr then
    return false
  end
  if util.buf_version(bufnr) ~= req.version then
    return false
  end
  local row, col = util.cursor(0)
  if row ~= req.row or col ~= req.col then
    return false
  end
  return mode_class() == req.mode
end

local function stop_timer(s)
  if s.timer then
    s.timer:stop()
    if not s.timer:is_closing() then
      s.timer:close()
    end
    s.timer = nil
  end
end

--- Cancel the pending request (if any) and remove the ghost text.
function M.clear(bufnr)
  local s = M.state[bufnr]
  if not s then
    return
  end
  if s.request and s.request.id then
    local client = vim.lsp.get_client_by_id(s.request.client_id)
    if client and not util.is_stopped(client) then
      pcall(util.cancel_request, client, s.request.id)
    end
  end
  s.request = nil
  if s.suggestion and s.suggestion.end_mark and api.nvim_buf_is_valid(bufnr) then
    pcall(api.nvim_buf_del_extmark, bufnr, track_ns, s.suggestion.end_mark)
  end
  s.suggestion = nil
  s.expect = nil
  ghost.clear(bufnr)
end

--- What is displayed for a suggestion: its text; when the replaced text [cursor, end) is a
--- suffix of the insert text (the server re-emits what follows the cursor), only the part
--- before it, so the line reads as it will after accepting.
local function display_text(bufnr, sug)
  local replaced = util.get_text(bufnr, sug.row, sug.col, sug.erow, sug.ecol)
  if replaced ~= '' and #sug.text >= #replaced and sug.text:sub(-#replaced) == replaced then
    return sug.text:sub(1, #sug.text - #replaced), true
  end
  return sug.text, false
end
M.display_text = display_text

local function render(bufnr, sug)
  local text, folded = display_text(bufnr, sug)
  ghost.show(bufnr, {
    row = sug.row,
    col = sug.col,
    erow = (not folded) and sug.erow or nil,
    ecol = (not folded) and sug.ecol or nil,
    text = text,
    hl = sug.draft and 'DgLspDraft' or 'DgLspGhost',
  })
end

local function range_to_bytes(bufnr, range, encoding)
  local srow, scol = util.from_lsp_pos(bufnr, range.start, encoding)
  local erow, ecol = util.from_lsp_pos(bufnr, range['end'], encoding)
  return srow, scol, erow, ecol
end

local function on_result(bufnr, req, err, result)
  local s = M.state[bufnr]
  if not still_current(bufnr, req) then
    return
  end
  s.request = nil
  s.last_latency_ms = (vim.uv or vim.loop).hrtime() / 1e6 - req.t0
  if err then
    -- RequestCancelled / ContentModified are routine.
    if err.code ~= -32800 and err.code ~= -32801 then
      util.warn('inlineCompletion failed: ' .. (err.message or vim.inspect(err)))
      emit('DgLspCompletion', { bufnr = bufnr, request_id = req.id, version = req.version, error = err })
    end
    ghost.clear(bufnr)
    s.suggestion = nil
    return
  end
  local items = {}
  if type(result) == 'table' then
    items = type(result.items) == 'table' and result.items or result
  end
  emit('DgLspCompletion', { bufnr = bufnr, request_id = req.id, version = req.version, result = result })
  local client = vim.lsp.get_client_by_id(req.client_id)
  local encoding = client and client.offset_encoding or 'utf-16'
  for _, item in ipairs(items) do
    local text = util.item_text(item)
    if text ~= '' then
      local srow, scol, erow, ecol = req.row, req.col, req.row, req.col
      if type(item.range) == 'table' then
        srow, scol, erow, ecol = range_to_bytes(bufnr, item.range, encoding)
      end
      if srow ~= req.row or scol ~= req.col then
        -- The protocol says the range starts at the cursor; anything else is not a suggestion
        -- we can show as ghost text at the cursor.
        break
      end
      s.suggestion = {
        text = text,
        row = srow,
        col = scol,
        erow = erow,
        ecol = ecol,
        request_id = req.id,
        version = req.version,
        draft = false,
      }
      render(bufnr, s.suggestion)
      return
    end
  end
  s.suggestion = nil
  ghost.clear(bufnr)
end

--- Request a suggestion at the cursor of the current window.
---@param kind? "invoked"|"automatic"
function M.trigger(kind)
  local bufnr = api.nvim_get_current_buf()
  local client = M.get_client(bufnr)
  if not client then
    if kind ~= 'automatic' then
      util.warn('no dg_lsp client attached to this buffer')
    end
    return false
  end
  M.clear(bufnr)
  local s = st(bufnr)
  stop_timer(s)
  local row, col = util.cursor(0)
  local encoding = client.offset_encoding or 'utf-16'
  local params = {
    textDocument = { uri = util.uri(bufnr) },
    position = util.to_lsp_pos(bufnr, row, col, encoding),
    context = { triggerKind = kind == 'automatic' and 2 or 1 },
  }
  ---@type dg_lsp.Request
  local req = {
    client_id = client.id,
    row = row,
    col = col,
    mode = mode_class(),
    kind = kind or 'invoked',
    t0 = (vim.uv or vim.loop).hrtime() / 1e6,
    version = -1,
  }
  s.request = req
  local ok, id = util.request(client, 'textDocument/inlineCompletion', params, function(err, result)
    on_result(bufnr, req, err, result)
  end, bufnr)
  -- The request flushes pending didChange first, so the version is the one the server sees.
  req.version = util.buf_version(bufnr)
  if not ok then
    s.request = nil
    return false
  end
  req.id = id
  return true
end

--- dg/draft notification handler (registered on the client).
function M.on_draft(_, params, ctx)
  if type(params) ~= 'table' or not config.options.show_drafts then
    return
  end
  for bufnr, s in pairs(M.state) do
    local req = s.request
    if req and req.id ~= nil and req.client_id == ctx.client_id and api.nvim_buf_is_valid(bufnr)
      and util.uri(bufnr) == params.uri then
      if params.requestId ~= req.id or params.version ~= req.version or not still_current(bufnr, req) then
        s.dropped_drafts = s.dropped_drafts + 1
        return
      end
      local client = vim.lsp.get_client_by_id(ctx.client_id)
      local encoding = client and client.offset_encoding or 'utf-16'
      local erow, ecol = req.row, req.col
      if type(params.range) == 'table' then
        local srow, scol
        srow, scol, erow, ecol = range_to_bytes(bufnr, params.range, encoding)
        if srow ~= req.row or scol ~= req.col then
          erow, ecol = req.row, req.col
        end
      end
      s.suggestion = {
        text = type(params.text) == 'string' and util.normalize_eol(params.text) or '',
        row = req.row,
        col = req.col,
        erow = erow,
        ecol = ecol,
        request_id = req.id,
        version = req.version,
        draft = true,
        step = params.step,
        max_steps = params.maxSteps,
        final = params.final,
      }
      render(bufnr, s.suggestion)
      emit('DgLspDraft', { bufnr = bufnr, request_id = req.id, step = params.step, max_steps = params.maxSteps, final = params.final })
      return
    end
  end
  -- No live request matches (another buffer's, an old one, or already answered).
  for bufnr, s in pairs(M.state) do
    if api.nvim_buf_is_valid(bufnr) and util.uri(bufnr) == params.uri then
      s.dropped_drafts = s.dropped_drafts + 1
    end
  end
end

--- Accept the suggestion: everything ("all"), or up to and including its first line break
--- ("line"). Returns true when something was inserted.
---@param what? "all"|"line"
function M.accept(what)
  local bufnr = api.nvim_get_current_buf()
  local s = M.state[bufnr]
  local sug = s and s.suggestion
  if not sug or sug.draft then
    return false
  end
  local row, col = util.cursor(0)
  if util.buf_version(bufnr) ~= sug.version or row ~= sug.row or col ~= sug.col then
    M.clear(bufnr)
    return false
  end
  local erow, ecol = sug.erow, sug.ecol
  if sug.end_mark then
    local p = api.nvim_buf_get_extmark_by_id(bufnr, track_ns, sug.end_mark, {})
    if p[1] then
      erow, ecol = p[1], p[2]
    end
  end
  local text = sug.text
  local nl = text:find('\n', 1, true)
  if what == 'line' and nl and nl < #text then
    -- Insert the first line (and its line break); keep the rest as the suggestion.
    local head, rest = text:sub(1, nl), text:sub(nl + 1)
    local end_mark = sug.end_mark
      or api.nvim_buf_set_extmark(bufnr, track_ns, erow, ecol, { right_gravity = true })
    api.nvim_buf_set_text(bufnr, row, col, row, col, vim.split(head, '\n', { plain = true }))
    local nrow, ncol = util.advance(row, col, head)
    api.nvim_win_set_cursor(0, { nrow + 1, ncol })
    local p = api.nvim_buf_get_extmark_by_id(bufnr, track_ns, end_mark, {})
    sug.text = rest
    sug.row, sug.col = nrow, ncol
    sug.erow, sug.ecol = p[1] or nrow, p[2] or ncol
    sug.end_mark = end_mark
    sug.version = util.buf_version(bufnr)
    s.expect = { tick = api.nvim_buf_get_changedtick(bufnr), row = nrow, col = ncol }
    render(bufnr, sug)
    return true
  end
  M.clear(bufnr)
  if erow < row or (erow == row and ecol < col) then
    erow, ecol = row, col
  end
  api.nvim_buf_set_text(bufnr, row, col, erow, ecol, vim.split(text, '\n', { plain = true }))
  local nrow, ncol = util.advance(row, col, text)
  api.nvim_win_set_cursor(0, { nrow + 1, ncol })
  emit('DgLspAccept', { bufnr = bufnr, request_id = sug.request_id, text = text })
  return true
end

function M.dismiss()
  M.clear(api.nvim_get_current_buf())
end

--- Buffer events: anything that changes the buffer, moves the cursor or changes mode drops
--- the suggestion; typing in insert mode re-arms the debounced automatic trigger.
function M.on_event(bufnr, event)
  local s = M.state[bufnr]
  if s and s.expect then
    local row, col = util.cursor(0)
    if api.nvim_get_current_buf() == bufnr and api.nvim_buf_get_changedtick(bufnr) == s.expect.tick
      and row == s.expect.row and col == s.expect.col and mode_class() == 'i' then
      return -- our own partial accept
    end
  end
  if s then
    stop_timer(s)
    if s.request or s.suggestion then
      M.clear(bufnr)
    end
  end
  if (event == 'TextChangedI' or event == 'CursorMovedI') and config.options.auto_trigger
    and not config.options.native_inline_completion then
    M.schedule(bufnr)
  end
end

function M.schedule(bufnr)
  local s = st(bufnr)
  stop_timer(s)
  local timer = (vim.uv or vim.loop).new_timer()
  s.timer = timer
  timer:start(config.options.debounce_ms, 0, vim.schedule_wrap(function()
    if s.timer ~= timer then
      return
    end
    stop_timer(s)
    if api.nvim_get_current_buf() == bufnr and mode_class() == 'i' and vim.fn.pumvisible() == 0 then
      M.trigger('automatic')
    end
  end))
end

--- "DG 12/32" while denoising, "" otherwise (for a statusline).
function M.status(bufnr)
  local s = M.state[bufnr or api.nvim_get_current_buf()]
  if not s or not s.request then
    return ''
  end
  local sug = s.suggestion
  if sug and sug.draft and sug.step then
    return string.format('DG %d/%d', sug.step, sug.max_steps or 0)
  end
  return 'DG …'
end

return M
