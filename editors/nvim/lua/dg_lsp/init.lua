--- dg_lsp: Neovim client for dg-lsp, a code-infilling language server on a diffusion model.
---
--- require('dg_lsp').setup({ ... })   -- see :help dg_lsp
local M = {}

local api = vim.api
local config = require('dg_lsp.config')
local util = require('dg_lsp.util')

M._setup_done = false

local function native_available()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end

function M.use_native()
  return config.options.native_inline_completion and native_available()
end

local function on_draft(err, params, ctx)
  if type(params) ~= 'table' then
    return
  end
  if require('dg_lsp.rewrite').on_draft(params, ctx) then
    return
  end
  require('dg_lsp.completion').on_draft(err, params, ctx)
end

local function capabilities()
  local caps = vim.lsp.protocol.make_client_capabilities()
  caps.textDocument = caps.textDocument or {}
  caps.textDocument.inlineCompletion = caps.textDocument.inlineCompletion or { dynamicRegistration = false }
  caps.workspace = caps.workspace or {}
  caps.workspace.applyEdit = true
  caps.workspace.executeCommand = caps.workspace.executeCommand or { dynamicRegistration = false }
  if config.options.capabilities then
    caps = vim.tbl_deep_extend('force', caps, config.options.capabilities)
  end
  return caps
end

local attached = {}

local function on_attach(client, bufnr)
  if attached[bufnr] then
    return
  end
  attached[bufnr] = true
  local completion = require('dg_lsp.completion')
  local rewrite = require('dg_lsp.rewrite')
  local group = api.nvim_create_augroup('dg_lsp_buf_' .. bufnr, { clear = true })
  if M.use_native() then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  else
    for _, ev in ipairs({ 'TextChangedI', 'TextChanged', 'TextChangedP', 'CursorMovedI', 'CursorMoved', 'ModeChanged', 'BufLeave' }) do
      api.nvim_create_autocmd(ev, {
        group = group,
        buffer = bufnr,
        callback = function()
          completion.on_event(bufnr, ev)
        end,
      })
    end
  end
  api.nvim_create_autocmd({ 'TextChanged', 'TextChangedI' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      rewrite.on_change(bufnr)
    end,
  })
  api.nvim_create_autocmd({ 'BufUnload', 'BufWipeout' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      completion.clear(bufnr)
      completion.state[bufnr] = nil
      rewrite.reject(bufnr, true)
      attached[bufnr] = nil
    end,
  })
  api.nvim_create_autocmd('LspDetach', {
    group = group,
    buffer = bufnr,
    callback = function(ev)
      if ev.data and ev.data.client_id == client.id then
        completion.clear(bufnr)
        rewrite.reject(bufnr, true)
        attached[bufnr] = nil
        pcall(api.nvim_del_augroup_by_id, group)
      end
    end,
  })
  if config.options.on_attach then
    config.options.on_attach(client, bufnr)
  end
end

--- The vim.lsp.start() config for `bufnr`.
function M.client_config(bufnr)
  local markers = config.options.root_markers
  local root
  if vim.fs.root then
    root = vim.fs.root(bufnr, markers)
  else
    local name = api.nvim_buf_get_name(bufnr)
    local found = vim.fs.find(markers, { upward = true, path = vim.fs.dirname(name) })[1]
    root = found and vim.fs.dirname(found) or nil
  end
  root = root or vim.fn.getcwd()
  local init = config.init_options()
  local commands = {}
  if config.options.code_action_preview then
    commands['dg.rewriteSelection'] = function(command, ctx)
      require('dg_lsp.rewrite').command_handler(command, ctx)
    end
  end
  return {
    name = 'dg_lsp',
    cmd = config.cmd(),
    root_dir = root,
    init_options = next(init) and init or vim.empty_dict(),
    capabilities = capabilities(),
    handlers = { ['dg/draft'] = on_draft },
    commands = commands,
    on_attach = on_attach,
    flags = { debounce_text_changes = config.options.change_debounce_ms },
  }
end

--- Start (or reuse) the server for `bufnr` and attach it.
function M.attach(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  if vim.bo[bufnr].buftype ~= '' then
    return nil
  end
  if vim.fn.executable(config.cmd()[1]) ~= 1 then
    vim.notify_once('dg_lsp: server command not found: ' .. config.cmd()[1], vim.log.levels.ERROR)
    return nil
  end
  return vim.lsp.start(M.client_config(bufnr), { bufnr = bufnr })
end

local function set_keymaps()
  local km = config.options.keymaps
  if not km then
    return
  end
  local maps = vim.deepcopy(config.default_keymaps)
  if type(km) == 'table' then
    for name, v in pairs(km) do
      maps[name] = v
    end
  end
  local actions = {
    accept = { '<Cmd>DgAccept<CR>', 'dg_lsp: accept suggestion' },
    accept_line = { '<Cmd>DgAcceptLine<CR>', 'dg_lsp: accept one line' },
    dismiss = { '<Cmd>DgDismiss<CR>', 'dg_lsp: dismiss suggestion' },
    trigger = { '<Cmd>DgComplete<CR>', 'dg_lsp: request a suggestion' },
    rewrite = { ':DgRewrite<CR>', 'dg_lsp: rewrite selection' },
    rewrite_accept = { '<Cmd>DgRewriteAccept<CR>', 'dg_lsp: accept rewrite' },
    rewrite_reject = { '<Cmd>DgRewriteReject<CR>', 'dg_lsp: reject rewrite' },
  }
  for name, spec in pairs(maps) do
    local action = actions[name]
    if action and spec then
      local mode, lhs = spec[1], spec[2]
      if type(spec) == 'string' then
        mode, lhs = config.default_keymaps[name][1], spec
      end
      vim.keymap.set(mode, lhs, action[1], { desc = action[2], silent = true })
    end
  end
end

--- Options: see :help dg_lsp-config.
function M.setup(opts)
  config.set(opts)
  if config.options.native_inline_completion and not native_available() then
    vim.notify_once('dg_lsp: vim.lsp.inline_completion needs Neovim 0.12+; using dg_lsp ghost text', vim.log.levels.WARN)
  end
  M._setup_done = true
  local group = api.nvim_create_augroup('dg_lsp', { clear = true })
  api.nvim_create_autocmd('FileType', {
    group = group,
    pattern = config.options.filetypes,
    callback = function(ev)
      M.attach(ev.buf)
    end,
  })
  set_keymaps()
  -- Buffers already open.
  for _, b in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(b) and vim.tbl_contains(config.options.filetypes, vim.bo[b].filetype) then
      M.attach(b)
    end
  end
end

--- Send new options to running servers (workspace/didChangeConfiguration).
function M.update(opts)
  config.set(vim.tbl_deep_extend('force', config.options, opts or {}))
  for _, c in ipairs(util.get_clients({ name = 'dg_lsp' })) do
    util.notify(c, 'workspace/didChangeConfiguration', { settings = { dgLsp = config.init_options() } })
  end
end

-- Command implementations -------------------------------------------------------------------

function M.complete()
  if M.use_native() then
    return vim.lsp.inline_completion.select and vim.lsp.inline_completion.select({ count = 1 })
  end
  return require('dg_lsp.completion').trigger('invoked')
end

function M.accept()
  if M.use_native() then
    return vim.lsp.inline_completion.get()
  end
  return require('dg_lsp.completion').accept('all')
end

function M.accept_line()
  if M.use_native() then
    return vim.lsp.inline_completion.get()
  end
  return require('dg_lsp.completion').accept('line')
end

function M.dismiss()
  return require('dg_lsp.completion').dismiss()
end

--- Rewrite lines line1..line2 (1-based, inclusive); with `charwise` marks of the last visual
--- selection, only the selected characters.
function M.rewrite_range(line1, line2, use_visual)
  local bufnr = api.nvim_get_current_buf()
  local srow, scol, erow, ecol = line1 - 1, 0, line2 - 1, #util.get_line(bufnr, line2 - 1)
  if use_visual then
    local vmode = vim.fn.visualmode()
    local s = api.nvim_buf_get_mark(bufnr, '<')
    local e = api.nvim_buf_get_mark(bufnr, '>')
    if vmode == 'v' and s[1] == line1 and e[1] == line2 then
      srow, scol = s[1] - 1, s[2]
      local eline = util.get_line(bufnr, e[1] - 1)
      erow = e[1] - 1
      -- '> is on the first byte of the last selected character: include all of its bytes.
      local ch = eline:sub(e[2] + 1):match('^[%z\1-\127\194-\244][\128-\191]*') or ' '
      local char_end = e[2] + #ch
      ecol = math.min(char_end, #eline)
    end
  end
  return require('dg_lsp.rewrite').rewrite(bufnr, srow, scol, erow, ecol)
end

function M.rewrite_accept()
  return require('dg_lsp.rewrite').accept()
end

function M.rewrite_reject()
  return require('dg_lsp.rewrite').reject()
end

--- dg.info from the server attached to `bufnr` (synchronously).
---@return table? info, string? err, number? latency_ms
function M.info(bufnr, timeout_ms)
  bufnr = bufnr or api.nvim_get_current_buf()
  local client = require('dg_lsp.completion').get_client(bufnr) or util.get_clients({ name = 'dg_lsp' })[1]
  if not client then
    return nil, 'no dg_lsp client running'
  end
  vim.wait(timeout_ms or 10000, function()
    return client.initialized == true
  end, 20)
  local t0 = (vim.uv or vim.loop).hrtime()
  local res, err = util.request_sync(client, 'workspace/executeCommand', { command = 'dg.info', arguments = {} }, timeout_ms or 10000, bufnr)
  local ms = ((vim.uv or vim.loop).hrtime() - t0) / 1e6
  if not res then
    return nil, err or 'request failed', ms
  end
  if res.err then
    return nil, res.err.message or vim.inspect(res.err), ms
  end
  return res.result, nil, ms
end

--- For statuslines: "DG 12/32" while denoising.
function M.status(bufnr)
  return require('dg_lsp.completion').status(bufnr)
end

--- The suggestion currently shown in `bufnr` (nil if none): {text, row, col, erow, ecol,
--- request_id, version, draft}.
function M.suggestion(bufnr)
  if bufnr == nil or bufnr == 0 then
    bufnr = api.nvim_get_current_buf()
  end
  local s = require('dg_lsp.completion').state[bufnr]
  return s and s.suggestion
end

return M
