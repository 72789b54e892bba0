--- :checkhealth dg_lsp
local M = {}

local health = vim.health or require('health')
local start = health.start or health.report_start
local ok = health.ok or health.report_ok
local warn = health.warn or health.report_warn
local error = health.error or health.report_error
local info = health.info or health.report_info

function M.check()
  start('dg_lsp: Neovim')
  local v = vim.version()
  local vs = string.format('%d.%d.%d', v.major, v.minor, v.patch)
  if vim.fn.has('nvim-0.10') == 1 then
    ok('Neovim ' .. vs .. ' (inline virtual text available)')
  elseif vim.fn.has('nvim-0.9') == 1 then
    warn('Neovim ' .. vs .. ': no inline virtual text, ghost text falls back to overlay/eol', { 'Use Neovim 0.10 or newer' })
  else
    error('Neovim ' .. vs .. ' is too old (vim.lsp.start needs 0.8, dg_lsp is tested on 0.10+)')
  end
  if vim.lsp.inline_completion then
    info('vim.lsp.inline_completion is available (option native_inline_completion)')
  end

  local dg = require('dg_lsp')
  local config = require('dg_lsp.config')
  start('dg_lsp: configuration')
  if not dg._setup_done then
    warn("setup() has not been called", { "Add require('dg_lsp').setup({}) to your config" })
  else
    ok('setup() called; filetypes: ' .. table.concat(config.options.filetypes, ', '))
  end
  local cmd = config.cmd()
  local exe = vim.fn.exepath(cmd[1])
  if exe ~= '' then
    ok('server executable: ' .. exe .. ' (cmd: ' .. table.concat(cmd, ' ') .. ')')
  else
    error('server executable not found: ' .. cmd[1], {
      "Install dg-lsp (pip install dg-lsp) in an environment on $PATH, or set cmd = { '/path/to/dg-lsp', 'serve' }",
    })
  end
  info('model: ' .. (config.options.model or '(server default: embedded model)'))
  info('device: ' .. (config.options.device or '(server default)'))
  local o = config.options
  info(string.format('timing: changes sent within %d ms of a key, request %d ms after the last key%s',
    o.change_debounce_ms, o.debounce_ms, o.auto_trigger and '' or ' (auto_trigger off: no automatic requests)'))
  local sent = config.init_options().completion or {}
  if sent.speculate then
    info('speculation: on (the server completes while the plugin waits; uses more CPU in fast typing: '
      .. 'completion = { speculate = false } turns it off)')
  else
    info('speculation: off')
  end

  start('dg_lsp: server')
  local util = require('dg_lsp.util')
  local clients = util.get_clients({ name = 'dg_lsp' })
  if #clients == 0 then
    info('no dg_lsp client is running (open a file of a configured filetype to start one)')
    return
  end
  local client = clients[1]
  ok(string.format('client %d running (root %s, position encoding %s)', client.id, client.config.root_dir or '?', client.offset_encoding or '?'))
  local bufnr
  for b in pairs(client.attached_buffers or {}) do
    bufnr = b
    break
  end
  local res, err, ms = dg.info(bufnr, config.options.health_timeout_ms)
  if not res then
    error('dg.info failed: ' .. tostring(err))
    return
  end
  ok(string.format('dg.info round trip: %.1f ms', ms))
  local status = res.status or '?'
  local line = string.format('model %s (%s) on %s, dtype %s', tostring(res.model), tostring(res.modelPath), tostring(res.device), tostring(res.dtype))
  if status == 'ready' then
    ok('status ready: ' .. line)
  elseif status == 'loading' then
    warn('status loading: ' .. line, { 'The model is still loading; run :checkhealth dg_lsp again in a moment' })
  else
    error('status ' .. tostring(status) .. ': ' .. tostring(res.error ~= vim.NIL and res.error or ''), { line })
  end
  local completion = type(res.options) == 'table' and res.options.completion or nil
  if type(completion) == 'table' then
    info(string.format('server: prefetch %s, speculate %s', tostring(completion.prefetch), tostring(completion.speculate)))
  end
  if type(res.languages) == 'table' then
    info('languages: ' .. table.concat(vim.tbl_map(tostring, res.languages), ', '))
  end
  if type(res.parameters) == 'table' or type(res.parameters) == 'number' then
    info('parameters: ' .. (type(res.parameters) == 'table' and vim.inspect(res.parameters, { newline = ' ', indent = '' }) or tostring(res.parameters)))
  end
end

return M
