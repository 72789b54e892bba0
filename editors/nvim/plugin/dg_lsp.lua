-- dg_lsp user commands. Nothing starts until require('dg_lsp').setup() is called.
if vim.g.loaded_dg_lsp then
  return
end
vim.g.loaded_dg_lsp = true

local function dg()
  local m = require('dg_lsp')
  if not m._setup_done then
    vim.notify("dg_lsp: call require('dg_lsp').setup() first", vim.log.levels.WARN)
    return nil
  end
  return m
end

local cmd = vim.api.nvim_create_user_command

cmd('DgComplete', function()
  local m = dg()
  if m then m.complete() end
end, { desc = 'dg_lsp: request an inline suggestion at the cursor' })

cmd('DgAccept', function()
  local m = dg()
  if m then m.accept() end
end, { desc = 'dg_lsp: accept the suggestion' })

cmd('DgAcceptLine', function()
  local m = dg()
  if m then m.accept_line() end
end, { desc = 'dg_lsp: accept the first line of the suggestion' })

cmd('DgDismiss', function()
  local m = dg()
  if m then m.dismiss() end
end, { desc = 'dg_lsp: dismiss the suggestion' })

cmd('DgRewrite', function(a)
  local m = dg()
  if m then m.rewrite_range(a.line1, a.line2, a.range > 0) end
end, { range = true, desc = 'dg_lsp: rewrite the selected range (diff preview)' })

cmd('DgRewriteAccept', function()
  local m = dg()
  if m then m.rewrite_accept() end
end, { desc = 'dg_lsp: apply the rewrite proposal' })

cmd('DgRewriteReject', function()
  local m = dg()
  if m then m.rewrite_reject() end
end, { desc = 'dg_lsp: drop the rewrite proposal' })

cmd('DgInfo', function()
  local m = dg()
  if not m then return end
  local res, err, ms = m.info()
  if not res then
    vim.notify('dg_lsp: ' .. tostring(err), vim.log.levels.ERROR)
    return
  end
  vim.notify(string.format('dg_lsp: %s on %s (%s), status %s, %.0f ms',
    tostring(res.model), tostring(res.device), tostring(res.dtype), tostring(res.status), ms))
end, { desc = 'dg_lsp: show the server model/device' })
