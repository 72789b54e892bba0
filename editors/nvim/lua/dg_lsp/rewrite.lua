--- Rewrite a range with the diffusion model: dg.rewriteSelection with apply=false, a diff
--- preview in a floating window, and accept/reject. A proposal is applied only while the
--- buffer is still at the version the server rewrote.
local M = {}

local api = vim.api
local util = require('dg_lsp.util')
local config = require('dg_lsp.config')

---@class dg_lsp.RewriteState
---@field bufnr integer
---@field client_id integer
---@field id integer?            JSON-RPC id of the executeCommand request
---@field version integer        buffer version at request time
---@field srow integer
---@field scol integer
---@field erow integer
---@field ecol integer
---@field old string             text of the range at request time
---@field result table?          the server's proposal {uri, version, range, text, edit}
---@field win integer?
---@field buf integer?
---@field step integer?
---@field max_steps integer?

---@type table<integer, dg_lsp.RewriteState>
M.pending = {}

local preview_ns = api.nvim_create_namespace('dg_lsp_rewrite_preview')

local function close_float(p)
  if p.win and api.nvim_win_is_valid(p.win) then
    api.nvim_win_close(p.win, true)
  end
  if p.buf and api.nvim_buf_is_valid(p.buf) then
    api.nvim_buf_delete(p.buf, { force = true })
  end
  p.win, p.buf = nil, nil
end

--- Lines of a diff between old and new text: {text, hl} pairs.
local function diff_lines(old, new)
  local out = {}
  local diff = vim.text and vim.text.diff or vim.diff
  if diff then
    local ok, unified = pcall(diff, old .. '\n', new .. '\n', { result_type = 'unified', ctxlen = 2 })
    if ok and type(unified) == 'string' then
      for _, l in ipairs(vim.split(unified, '\n', { plain = true })) do
        if l ~= '' and not l:match('^\\ No newline') then
          local c = l:sub(1, 1)
          local hl = (c == '+' and 'DgLspPreviewAdd') or (c == '-' and 'DgLspPreviewDelete')
            or (c == '@' and 'DgLspPreviewHeader') or nil
          out[#out + 1] = { l, hl }
        end
      end
      if #out == 0 then
        out[1] = { '(no change)', 'Comment' }
      end
      return out
    end
  end
  for _, l in ipairs(vim.split(old, '\n', { plain = true })) do
    out[#out + 1] = { '-' .. l, 'DgLspPreviewDelete' }
  end
  for _, l in ipairs(vim.split(new, '\n', { plain = true })) do
    out[#out + 1] = { '+' .. l, 'DgLspPreviewAdd' }
  end
  return out
end

local function show_float(p, lines, title)
  if not (p.buf and api.nvim_buf_is_valid(p.buf)) then
    p.buf = api.nvim_create_buf(false, true)
    vim.bo[p.buf].bufhidden = 'wipe'
    vim.bo[p.buf].filetype = 'dg_lsp_preview'
    for _, lhs in ipairs({ 'a', '<CR>' }) do
      vim.keymap.set('n', lhs, function() M.accept(p.bufnr) end, { buffer = p.buf, nowait = true, desc = 'Accept the rewrite' })
    end
    for _, lhs in ipairs({ 'r', 'q', '<Esc>' }) do
      vim.keymap.set('n', lhs, function() M.reject(p.bufnr) end, { buffer = p.buf, nowait = true, desc = 'Reject the rewrite' })
    end
  end
  local text = {}
  local width = #title + 4
  local printable = require('dg_lsp.ghost').printable
  for i, l in ipairs(lines) do
    text[i] = printable(l[1])
    width = math.max(width, vim.fn.strdisplaywidth(text[i]) + 1)
  end
  vim.bo[p.buf].modifiable = true
  api.nvim_buf_set_lines(p.buf, 0, -1, false, text)
  vim.bo[p.buf].modifiable = false
  api.nvim_buf_clear_namespace(p.buf, preview_ns, 0, -1)
  for i, l in ipairs(lines) do
    if l[2] then
      api.nvim_buf_set_extmark(p.buf, preview_ns, i - 1, 0, { line_hl_group = l[2] })
    end
  end
  local srcwin = vim.fn.bufwinid(p.bufnr)
  if srcwin == -1 then
    srcwin = api.nvim_get_current_win()
  end
  local wwidth = api.nvim_win_get_width(srcwin)
  width = math.max(20, math.min(width, wwidth - 4))
  local height = math.max(1, math.min(#text, math.floor(api.nvim_win_get_height(srcwin) / 2)))
  local wconf = {
    relative = 'win',
    win = srcwin,
    bufpos = { p.erow, 0 },
    row = 1,
    col = 2,
    width = width,
    height = height,
    style = 'minimal',
    border = config.options.preview_border,
    focusable = true,
    zindex = 60,
  }
  if vim.fn.has('nvim-0.9') == 1 and wconf.border ~= 'none' then
    wconf.title = title
    wconf.title_pos = 'center'
  end
  if p.win and api.nvim_win_is_valid(p.win) then
    wconf.noautocmd = nil
    api.nvim_win_set_config(p.win, wconf)
  else
    wconf.noautocmd = true
    p.win = api.nvim_open_win(p.buf, false, wconf)
    vim.wo[p.win].wrap = false
  end
end

--- Rewrite [(srow, scol), (erow, ecol)) of `bufnr` (0-based rows, byte cols, end exclusive).
function M.rewrite(bufnr, srow, scol, erow, ecol)
  local client = require('dg_lsp.completion').get_client(bufnr)
  if not client then
    util.warn('no dg_lsp client attached to this buffer')
    return false
  end
  if erow < srow or (erow == srow and ecol <= scol) then
    util.warn('nothing selected to rewrite')
    return false
  end
  M.reject(bufnr, true)
  local encoding = client.offset_encoding or 'utf-16'
  local range = {
    start = util.to_lsp_pos(bufnr, srow, scol, encoding),
    ['end'] = util.to_lsp_pos(bufnr, erow, ecol, encoding),
  }
  ---@type dg_lsp.RewriteState
  local p = {
    bufnr = bufnr,
    client_id = client.id,
    version = -1,
    srow = srow,
    scol = scol,
    erow = erow,
    ecol = ecol,
    old = util.get_text(bufnr, srow, scol, erow, ecol),
  }
  M.pending[bufnr] = p
  local params = {
    command = 'dg.rewriteSelection',
    arguments = { util.uri(bufnr), range, { apply = false } },
  }
  local ok, id = util.request(client, 'workspace/executeCommand', params, function(err, result)
    if M.pending[bufnr] ~= p then
      return
    end
    if err or type(result) ~= 'table' then
      M.reject(bufnr, true)
      util.warn('rewrite failed: ' .. (err and (err.message or vim.inspect(err)) or 'empty result'))
      return
    end
    if type(result.version) == 'number' and result.version ~= util.buf_version(bufnr) then
      M.reject(bufnr, true)
      util.warn('buffer changed while rewriting; proposal dropped')
      return
    end
    if type(result.text) ~= 'string' then
      M.reject(bufnr, true)
      local why = type(result.error) == 'string' and result.error or 'no proposal'
      util.info('rewrite: ' .. why)
      return
    end
    p.result = result
    local old = p.old
    if type(result.range) == 'table' then
      local s1, c1 = util.from_lsp_pos(bufnr, result.range.start, encoding)
      local e1, c2 = util.from_lsp_pos(bufnr, result.range['end'], encoding)
      p.srow, p.scol, p.erow, p.ecol = s1, c1, e1, c2
      old = util.get_text(bufnr, s1, c1, e1, c2)
    end
    show_float(p, diff_lines(old, util.normalize_eol(result.text)), ' DG rewrite: a accept · r reject ')
    api.nvim_exec_autocmds('User', { pattern = 'DgLspRewrite', modeline = false, data = { bufnr = bufnr, result = result } })
  end, bufnr)
  p.version = util.buf_version(bufnr)
  if not ok then
    M.pending[bufnr] = nil
    return false
  end
  p.id = id
  show_float(p, { { 'denoising…', 'Comment' } }, ' DG rewrite ')
  return true
end

--- dg/draft for a pending rewrite: shows the draft in the preview. Returns true if it
--- belonged to a rewrite request.
function M.on_draft(params, ctx)
  for bufnr, p in pairs(M.pending) do
    if p.id ~= nil and p.id == params.requestId and p.client_id == ctx.client_id then
      if p.result or not api.nvim_buf_is_valid(bufnr) or params.uri ~= util.uri(bufnr)
        or params.version ~= p.version or util.buf_version(bufnr) ~= p.version then
        return true
      end
      p.step, p.max_steps = params.step, params.maxSteps
      if config.options.show_drafts then
        local lines = { { string.format('denoising %s/%s', params.step or '?', params.maxSteps or '?'), 'Comment' } }
        local draft = type(params.text) == 'string' and util.normalize_eol(params.text) or ''
        for _, l in ipairs(vim.split(draft, '\n', { plain = true })) do
          lines[#lines + 1] = { '+' .. l, 'DgLspDraft' }
        end
        show_float(p, lines, ' DG rewrite ')
      end
      return true
    end
  end
  return false
end

local function pick(bufnr)
  if bufnr and M.pending[bufnr] then
    return bufnr, M.pending[bufnr]
  end
  local cur = api.nvim_get_current_buf()
  if M.pending[cur] then
    return cur, M.pending[cur]
  end
  for b, p in pairs(M.pending) do
    return b, p
  end
end

--- Apply the pending proposal (only if the buffer is still at the proposal's version).
function M.accept(bufnr)
  local b, p = pick(bufnr)
  if not p then
    util.warn('no rewrite proposal to accept')
    return false
  end
  if not p.result then
    util.warn('the rewrite is still running')
    return false
  end
  local result = p.result
  local version = type(result.version) == 'number' and result.version or p.version
  if util.buf_version(b) ~= version then
    M.reject(b, true)
    util.warn('buffer changed since the proposal; not applied')
    return false
  end
  local client = vim.lsp.get_client_by_id(p.client_id)
  local encoding = client and client.offset_encoding or 'utf-16'
  M.pending[b] = nil
  close_float(p)
  if type(result.edit) == 'table' then
    vim.lsp.util.apply_workspace_edit(result.edit, encoding)
  else
    api.nvim_buf_set_text(b, p.srow, p.scol, p.erow, p.ecol, vim.split(util.normalize_eol(result.text), '\n', { plain = true }))
  end
  api.nvim_exec_autocmds('User', { pattern = 'DgLspRewriteAccept', modeline = false, data = { bufnr = b, result = result } })
  return true
end

--- Drop the pending proposal (cancelling the request if it still runs).
function M.reject(bufnr, quiet)
  local b, p = pick(bufnr)
  if not p then
    if not quiet then
      util.warn('no rewrite proposal to reject')
    end
    return false
  end
  M.pending[b] = nil
  if not p.result and p.id then
    local client = vim.lsp.get_client_by_id(p.client_id)
    if client and not util.is_stopped(client) then
      pcall(util.cancel_request, client, p.id)
    end
  end
  close_float(p)
  return true
end

--- A buffer change makes a proposal stale: drop it.
function M.on_change(bufnr)
  local p = M.pending[bufnr]
  if p and util.buf_version(bufnr) ~= p.version then
    M.reject(bufnr, true)
  end
end

--- Client-side handler of the server's dg.rewriteSelection command (code action): preview
--- instead of applying.
function M.command_handler(command, ctx)
  local args = command.arguments or {}
  local uri, range = args[1], args[2]
  if type(uri) ~= 'string' or type(range) ~= 'table' then
    return
  end
  local bufnr = vim.uri_to_bufnr(uri)
  local client = vim.lsp.get_client_by_id(ctx.client_id)
  local encoding = client and client.offset_encoding or 'utf-16'
  local srow, scol = util.from_lsp_pos(bufnr, range.start, encoding)
  local erow, ecol = util.from_lsp_pos(bufnr, range['end'], encoding)
  M.rewrite(bufnr, srow, scol, erow, ecol)
end

return M
