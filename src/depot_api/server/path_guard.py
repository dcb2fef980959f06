"""Refusing, in Envoy, request paths that pyvoy cannot hand to the application.

pyvoy (1.3.0, the newest) decodes the path's %-escapes and makes a Python `str` of the result
for the ASGI scope's "path". When the decoded bytes are not UTF-8 (`/x/a%B8`, `/x/%C3`), that
raises UnicodeDecodeError inside pyvoy, before the application is called: nothing answers, and
the client waits until it gives up. pyvoy has no option for it, and the application cannot
catch what happens before it runs.

So a Lua filter (built into Envoy) goes before pyvoy's, in every HTTP filter chain: it decodes
the escapes the same way (%XX with two hex digits; anything else stays as it is) and answers
400 with one line of plain text when the result is not UTF-8 (strict: no overlong forms, no
surrogates, nothing above U+10FFFF, as Rust's and Python's decoders). Paths without a `%` or a
byte above 0x7F are let through after one search, so well-formed calls pay next to nothing.
A refused request's body is read before the answer, as the application does (see
api/server_shims.py, read_body_first): answered while the body is still arriving, the HTTP/2
stream is reset after the answer, and clients report the reset instead of it.
These refusals are Envoy's: they do not reach the application's request log or metrics.
"""

from __future__ import annotations

from typing import Any

MESSAGE = "the request path's %-escapes do not decode to UTF-8 text"

_LUA = (
    r"""
local function decoded(path)
  return (path:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

-- Whether s is UTF-8, strictly (RFC 3629).
local function is_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local extra, low, high = 0, 0x80, 0xBF  -- the range of the second byte
    if c < 0x80 then
      extra = 0
    elseif c >= 0xC2 and c <= 0xDF then
      extra = 1
    elseif c == 0xE0 then
      extra, low = 2, 0xA0  -- no overlong forms
    elseif c == 0xED then
      extra, high = 2, 0x9F  -- no surrogates
    elseif c >= 0xE1 and c <= 0xEF then
      extra = 2
    elseif c == 0xF0 then
      extra, low = 3, 0x90  -- no overlong forms
    elseif c == 0xF4 then
      extra, high = 3, 0x8F  -- nothing above U+10FFFF
    elseif c >= 0xF1 and c <= 0xF3 then
      extra = 3
    else
      return false
    end
    if i + extra > n then
      return false
    end
    for k = 1, extra do
      local b = s:byte(i + k)
      if k == 1 then
        if b < low or b > high then return false end
      elseif b < 0x80 or b > 0xBF then
        return false
      end
    end
    i = i + extra + 1
  end
  return true
end

function envoy_on_request(request_handle)
  local path = request_handle:headers():get(":path")
  if path == nil then
    return
  end
  path = path:match("^[^?]*")
  if not path:find("[%%\128-\255]") then
    return
  end
  if not is_utf8(decoded(path)) then
    -- The body first (see the module's docstring).
    request_handle:body()
    request_handle:respond(
      {[":status"] = "400", ["content-type"] = "text/plain; charset=utf-8"},
      "MESSAGE\n")
  end
end
"""
).replace("MESSAGE", MESSAGE)

# The name PyvoyServer gives its filter in the configuration it generates.
_PYVOY = "pyvoy"
_FILTER: dict[str, Any] = {
    "name": "envoy.filters.http.lua",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": _LUA},
    },
}


def add_path_guard(envoy_config: dict[str, Any]) -> int:
    """Put the guard just before pyvoy's filter in every HTTP filter chain that has it (plain
    and TLS listeners alike); return how many chains got it."""
    return _add(envoy_config)


def _add(node: object) -> int:
    if isinstance(node, dict):
        added = 0
        filters = node.get("http_filters")
        if isinstance(filters, list):
            names = [f.get("name") for f in filters]
            if _PYVOY in names and _FILTER["name"] not in names:
                filters.insert(names.index(_PYVOY), _FILTER)
                added += 1
        return added + sum(_add(v) for v in node.values())
    if isinstance(node, list):
        return sum(_add(v) for v in node)
    return 0
