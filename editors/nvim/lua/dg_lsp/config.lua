--- Options of require('dg_lsp').setup(); see :help dg_lsp-config.
local M = {}

M.defaults = {
  -- Command that starts the server. nil: { 'dg-lsp', 'serve' } plus `--model`/`--log-file`
  -- from the options below. A list is used as is.
  cmd = nil,
  -- Model directory (sent as `--model DIR` and initializationOptions.model). nil: the
  -- server's embedded default model.
  model = nil,
  -- "auto" | "cpu" | "cuda" (initializationOptions.device); nil: server default.
  device = nil,
  -- Server log file (`--log-file`).
  log_file = nil,
  -- initializationOptions.completion, camelCase keys passed as is:
  -- { maxSteps, contextTokens, draftIntervalMs, parseCheck, prefetch, speculate, seed }
  -- `speculate` left unset is sent as true while this plugin triggers automatically (auto_trigger,
  -- not native_inline_completion): the server then completes during the debounce_ms it waits.
  completion = {},
  -- initializationOptions.rewrite: { maxSteps, noise }
  rewrite = {},
  -- Extra initializationOptions merged over the ones built from the options above.
  init_options = {},
  -- Filetypes to attach to.
  filetypes = {
    'python', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact', 'go', 'rust',
    'c', 'cpp', 'java', 'lua', 'sh', 'bash',
  },
  -- Root directory markers (the client is shared by buffers with the same root).
  root_markers = { '.git', 'pyproject.toml', 'package.json', 'go.mod', 'Cargo.toml' },
  -- Request completions automatically while typing in insert mode.
  auto_trigger = true,
  -- Delay after the last keystroke before an automatic request (ms).
  debounce_ms = 100,
  -- Changes are sent to the server batched, at most this long after a keystroke (ms): the
  -- server's prefetch / speculation starts from them (the client's debounce_text_changes).
  change_debounce_ms = 20,
  -- Show intermediate drafts (dg/draft notifications) as ghost text while denoising.
  show_drafts = true,
  -- Use vim.lsp.inline_completion (Neovim 0.12+) instead of this plugin's ghost text.
  -- Ignored (with a warning) where the API does not exist.
  native_inline_completion = false,
  -- Route the server's "Rewrite selection (diffusion)" code action through the diff preview.
  code_action_preview = true,
  -- Border of the rewrite preview window.
  preview_border = 'rounded',
  -- false: no keymaps; true: the defaults below; a table: override/disable (false) single keys.
  keymaps = false,
  -- Extra client capabilities merged into the defaults.
  capabilities = nil,
  -- function(client, bufnr) called on attach.
  on_attach = nil,
  -- Timeout of :checkhealth's dg.info round trip (ms).
  health_timeout_ms = 10000,
}

M.default_keymaps = {
  accept = { 'i', '<M-l>' },
  accept_line = { 'i', '<M-j>' },
  dismiss = { 'i', '<C-]>' },
  trigger = { 'i', '<M-\\>' },
  rewrite = { 'x', '<leader>dr' },
  rewrite_accept = { 'n', '<leader>da' },
  rewrite_reject = { 'n', '<leader>dx' },
}

---@type table
M.options = vim.deepcopy(M.defaults)

function M.set(opts)
  opts = opts or {}
  local checks = {
    { 'cmd', 'table' },
    { 'model', 'string' },
    { 'device', 'string' },
    { 'log_file', 'string' },
    { 'completion', 'table' },
    { 'rewrite', 'table' },
    { 'init_options', 'table' },
    { 'filetypes', 'table' },
    { 'auto_trigger', 'boolean' },
    { 'debounce_ms', 'number' },
    { 'change_debounce_ms', 'number' },
    { 'show_drafts', 'boolean' },
    { 'keymaps', { 'boolean', 'table' } },
    { 'on_attach', 'function' },
  }
  for _, c in ipairs(checks) do
    if vim.fn.has('nvim-0.11') == 1 then
      vim.validate(c[1], opts[c[1]], c[2], true)
    else
      vim.validate({ [c[1]] = { opts[c[1]], c[2], true } })
    end
  end
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts)
  -- Lists replace, they do not merge.
  for _, k in ipairs({ 'cmd', 'filetypes', 'root_markers' }) do
    if opts[k] then
      M.options[k] = opts[k]
    end
  end
  return M.options
end

--- The command line that starts the server.
function M.cmd()
  local o = M.options
  if o.cmd then
    return o.cmd
  end
  local cmd = { 'dg-lsp', 'serve' }
  if o.model then
    vim.list_extend(cmd, { '--model', o.model })
  end
  if o.log_file then
    vim.list_extend(cmd, { '--log-file', o.log_file })
  end
  return cmd
end

--- initializationOptions (also the `dgLsp` settings of workspace/didChangeConfiguration).
function M.init_options()
  local o = M.options
  local init = {}
  if o.model then
    init.model = o.model
  end
  if o.device then
    init.device = o.device
  end
  local completion = vim.deepcopy(o.completion or {})
  if completion.speculate == nil and o.auto_trigger and not o.native_inline_completion then
    completion.speculate = true -- use the debounce: the answer is on its way before the request
  end
  if next(completion) then
    init.completion = completion
  end
  if next(o.rewrite or {}) then
    init.rewrite = vim.deepcopy(o.rewrite)
  end
  return vim.tbl_deep_extend('force', init, o.init_options or {})
end

return M
