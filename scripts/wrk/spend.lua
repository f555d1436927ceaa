-- POST /api/v1/orgs/{org}/credits/spend {amount: 1}, each request with its
-- own Idempotency-Key, cycling through the orgs in BENCH_ORGS (comma-separated),
-- as the holder of the access token BENCH_TOKEN.
-- Counts the answers by status so the script can check the balance after.
local orgs = {}
for org in string.gmatch(os.getenv("BENCH_ORGS"), "[^,]+") do
  table.insert(orgs, org)
end
local run = os.getenv("BENCH_RUN") or "r"
local auth = "Bearer " .. os.getenv("BENCH_TOKEN")
local counter = 0
local threads = {}
local thread_id = 0

setup = function(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  table.insert(threads, thread)
end

init = function(args)
  ok, refused, other = 0, 0, 0
end

request = function()
  counter = counter + 1
  local org = orgs[(counter + (tid or 0)) % #orgs + 1]
  return wrk.format("POST", "/api/v1/orgs/" .. org .. "/credits/spend",
    { ["Content-Type"] = "application/json", ["Authorization"] = auth,
      ["Idempotency-Key"] = string.format("%s-%d-%d", run, tid or 0, counter) },
    '{"amount":1,"description":"bench"}')
end

response = function(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 402 then refused = refused + 1
  else other = other + 1 end
end

done = function(summary, latency, requests)
  local t_ok, t_refused, t_other = 0, 0, 0
  for _, t in ipairs(threads) do
    t_ok = t_ok + t:get("ok")
    t_refused = t_refused + t:get("refused")
    t_other = t_other + t:get("other")
  end
  io.write(string.format("spends: %d ok, %d refused, %d other\n", t_ok, t_refused, t_other))
  io.write(string.format("p50 %.2f ms, p99 %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  local f = io.open(os.getenv("BENCH_OUT"), "w")
  f:write(t_ok)
  f:close()
end
