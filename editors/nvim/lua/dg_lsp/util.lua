--- Small helpers shared by the dg_lsp modules: Neovim version compatibility, LSP position
--- conversion, buffer versions.
local M = {}

local api = vim.api

M.has_011 = vim.fn.has('nvim-0.11') == 1
M.has_010 = vim.fn.has('nvim-0.10') == 1

--- Send a request through a client object on 0.10 (`client.request(...)`) and 0.11+
--- (`client:request(...)`).
---@return boolean ok, integer? request_id
function M.request(client, method, params, handler, bufnr)
  if M.has_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

---@return table? result, string? err
function M.request_sync(client, method, params, timeout_ms, bufnr)
  if M.has_011 then
    return client:request_sync(method, params, timeout_ms, bufnr)
  end
  return client.request_sync(method, params, timeout_ms, bufnr)
end

function M.notify(client, method, params)
  if M.has_011 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

function M.cancel_request(client, id)
  if M.has_011 then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

function M.is_stopped(client)
  if M.has_011 then
    return client:is_stopped()
  end
  return client.is_stopped()
end

function M.get_clients(filter)
  if vim.lsp.get_clients then
    return vim.lsp.get_clients(filter)
  end
  ---@diagnostic disable-next-line: deprecated
  return vim.lsp.get_active_clients(filter)
end

--- The document version the LSP client last sent for `bufnr` (it follows b:changedtick).
function M.buf_version(bufnr)
  -- Neovim 0.11 defaults unseen buffers to 0 (what didOpen sends); 0.10 sets it on attach.
  local v = vim.lsp.util.buf_versions[bufnr]
  if v == nil then
    v = api.nvim_buf_get_changedtick(bufnr)
  end
  return v
end

function M.get_line(bufnr, row)
  return api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
end

--- LSP character offset (in `encoding`) on line `row` -> byte column.
function M.byte_col(bufnr, row, character, encoding)
  if character <= 0 then
    return 0
  end
  local line = M.get_line(bufnr, row)
  if encoding == 'utf-8' then
    return math.min(character, #line)
  end
  local ok, col
  if M.has_011 then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == 'utf-16')
  end
  if not ok then
    return #line
  end
  return math.min(col, #line)
end

--- Byte column on line `row` -> LSP character offset in `encoding`.
function M.char_offset(bufnr, row, col, encoding)
  if col <= 0 then
    return 0
  end
  local line = M.get_line(bufnr, row)
  col = math.min(col, #line)
  if encoding == 'utf-8' then
    return col
  end
  if M.has_011 then
    return vim.str_utfindex(line, encoding, col, false)
  end
  local u32, u16 = vim.str_utfindex(line, col)
  return encoding == 'utf-16' and u16 or u32
end

--- LSP Position -> (row, byte col), both 0-based.
function M.from_lsp_pos(bufnr, pos, encoding)
  local line_count = api.nvim_buf_line_count(bufnr)
  if pos.line >= line_count then
    local last = line_count - 1
    return last, #M.get_line(bufnr, last)
  end
  return pos.line, M.byte_col(bufnr, pos.line, pos.character, encoding)
end

--- (row, byte col), 0-based -> LSP Position.
function M.to_lsp_pos(bufnr, row, col, encoding)
  return { line = row, character = M.char_offset(bufnr, row, col, encoding) }
end

--- Cursor of window `win` as (row, col), both 0-based.
function M.cursor(win)
  local c = api.nvim_win_get_cursor(win or 0)
  return c[1] - 1, c[2]
end

--- Text between two 0-based (row, col) positions.
function M.get_text(bufnr, srow, scol, erow, ecol)
  if erow < srow or (erow == srow and ecol <= scol) then
    return ''
  end
  return table.concat(api.nvim_buf_get_text(bufnr, srow, scol, erow, ecol, {}), '\n')
end

--- (row, col) reached after inserting `text` at (row, col).
function M.advance(row, col, text)
  local lines = vim.split(text, '\n', { plain = true })
  if #lines == 1 then
    return row, col + #lines[1]
  end
  return row + #lines - 1, #lines[#lines]
end

function M.uri(bufnr)
  return vim.uri_from_bufnr(bufnr)
end

function M.warn(msg)
  vim.notify('dg_lsp: ' .. msg, vim.log.levels.WARN)
end

function M.info(msg)
  vim.notify('dg_lsp: ' .. msg, vim.log.levels.INFO)
end

--- LSP line breaks (\r\n, \r, \n) as \n, the way Neovim applies text edits.
function M.normalize_eol(s)
  return (s:gsub('\r\n?', '\n'))
end

--- The insert text of an InlineCompletionItem (a string or a StringValue snippet).
function M.item_text(item)
  local t = item.insertText
  if type(t) == 'table' then
    -- StringValue snippet: drop tab stops / placeholders, keep their default text.
    local s = type(t.value) == 'string' and t.value or ''
    s = s:gsub('%${%d+:([^}]*)}', '%1'):gsub('%${%d+}', ''):gsub('%$%d+', '')
    return M.normalize_eol(s)
  end
  return type(t) == 'string' and M.normalize_eol(t) or ''
end

return M
