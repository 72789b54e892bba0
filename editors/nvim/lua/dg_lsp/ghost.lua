--- Ghost text rendering with extmarks.
---
--- The first line of the suggestion is inline virtual text at the cursor
--- (virt_text_pos = "inline", Neovim 0.10+); the other lines are virt_lines below the cursor
--- line. On Neovim < 0.10 the first line is an overlay at the end of the line (or "eol" when
--- there is text after the cursor). Text that the suggestion replaces (its range may reach past
--- the cursor) is highlighted with DgLspReplaced.
local M = {}

local api = vim.api
local util = require('dg_lsp.util')

M.ns = api.nvim_create_namespace('dg_lsp_ghost')

local function define_highlights()
  api.nvim_set_hl(0, 'DgLspGhost', { link = 'Comment', default = true })
  api.nvim_set_hl(0, 'DgLspDraft', { link = 'NonText', default = true })
  api.nvim_set_hl(0, 'DgLspReplaced', { link = 'DiffDelete', default = true })
  api.nvim_set_hl(0, 'DgLspPreviewAdd', { link = 'DiffAdd', default = true })
  api.nvim_set_hl(0, 'DgLspPreviewDelete', { link = 'DiffDelete', default = true })
  api.nvim_set_hl(0, 'DgLspPreviewHeader', { link = 'Title', default = true })
end
define_highlights()
api.nvim_create_autocmd('ColorScheme', {
  group = api.nvim_create_augroup('dg_lsp_highlights', { clear = true }),
  callback = define_highlights,
})

function M.clear(bufnr)
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
end

--- Control characters (other than tab) in caret notation, as Neovim shows them in buffer text
--- (the model's text may contain any byte; virtual text must stay one screen line).
function M.printable(line)
  return (line:gsub('[%z\1-\8\11-\31\127]', function(c)
    return '^' .. string.char((c:byte() + 64) % 128)
  end))
end

--- Show `text` as ghost text at (row, col); [col, end) of the buffer is what the suggestion
--- replaces (erow/ecol may be nil for a pure insertion).
---@param opts {row: integer, col: integer, erow?: integer, ecol?: integer, text: string, hl?: string}
function M.show(bufnr, opts)
  M.clear(bufnr)
  local hl = opts.hl or 'DgLspGhost'
  local lines = vim.split(opts.text, '\n', { plain = true })
  for i, l in ipairs(lines) do
    lines[i] = M.printable(l)
  end
  local row, col = opts.row, opts.col
  local line = util.get_line(bufnr, row)
  col = math.min(col, #line)

  if opts.erow and (opts.erow > row or (opts.erow == row and opts.ecol > col)) then
    local erow = math.min(opts.erow, api.nvim_buf_line_count(bufnr) - 1)
    local ecol = math.min(opts.ecol, #util.get_line(bufnr, erow))
    api.nvim_buf_set_extmark(bufnr, M.ns, row, col, {
      end_row = erow,
      end_col = ecol,
      hl_group = 'DgLspReplaced',
      priority = 200,
    })
  end

  local first = lines[1]
  local mark = { priority = 1000 }
  if first ~= '' then
    mark.virt_text = { { first, hl } }
    if util.has_010 then
      mark.virt_text_pos = 'inline'
    elseif col >= #line then
      mark.virt_text_pos = 'overlay'
    else
      mark.virt_text_pos = 'eol'
    end
  end
  if #lines > 1 then
    local vl = {}
    for i = 2, #lines do
      -- An empty chunk list renders an empty line.
      vl[#vl + 1] = lines[i] ~= '' and { { lines[i], hl } } or { { '', hl } }
    end
    mark.virt_lines = vl
  end
  if mark.virt_text or mark.virt_lines then
    api.nvim_buf_set_extmark(bufnr, M.ns, row, col, mark)
  end
end

--- The ghost text currently shown in `bufnr`, read back from the extmarks (for tests and
--- :DgAccept sanity checks).
---@return {text: string, row: integer, col: integer, hl: string?}?
function M.read(bufnr)
  local marks = api.nvim_buf_get_extmarks(bufnr, M.ns, 0, -1, { details = true })
  for _, m in ipairs(marks) do
    local d = m[4]
    if d.virt_text or d.virt_lines then
      local parts = {}
      local hl
      local first = {}
      for _, chunk in ipairs(d.virt_text or {}) do
        first[#first + 1] = chunk[1]
        hl = hl or chunk[2]
      end
      parts[1] = table.concat(first)
      for _, vline in ipairs(d.virt_lines or {}) do
        local s = {}
        for _, chunk in ipairs(vline) do
          s[#s + 1] = chunk[1]
          hl = hl or chunk[2]
        end
        parts[#parts + 1] = table.concat(s)
      end
      return { text = table.concat(parts, '\n'), row = m[2], col = m[3], hl = hl }
    end
  end
  return nil
end

return M
