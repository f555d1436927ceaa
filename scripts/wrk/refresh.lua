-- Chains refresh-token grants: each thread (one connection each) starts from
-- its own refresh token (REFRESH_TOKENS, comma-separated) and sends the token
-- from the previous answer, as a client rotating its session does.
local threads = {}
local counter = 0

setup = function(thread)
  counter = counter + 1
  local tokens = {}
  for t in string.gmatch(os.getenv("REFRESH_TOKENS"), "[^,]+") do table.insert(tokens, t) end
  thread:set("token", tokens[counter])
end

request = function()
  return wrk.format("POST", "/auth/v1/token?grant_type=refresh_token",
    { ["Content-Type"] = "application/json" },
    string.format('{"refresh_token":"%s"}', token))
end

response = function(status, headers, body)
  local t = string.match(body, '"refresh_token":"([^"]+)"')
  if t then token = t end
end
