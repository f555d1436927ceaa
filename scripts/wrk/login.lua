-- POST /auth/v1/token?grant_type=password, cycling through BENCH_USERS
-- accounts (bench-<i>@example.com) so the per-address limit (10 a minute)
-- is not what is measured.
local users = tonumber(os.getenv("BENCH_USERS"))
local password = os.getenv("BENCH_PASSWORD")
local counter = 0
local thread_id = 0

setup = function(thread)
  thread_id = thread_id + 1
  thread:set("offset", thread_id * 7919)
end

request = function()
  counter = counter + 1
  local i = ((offset or 0) + counter) % users + 1
  return wrk.format("POST", "/auth/v1/token?grant_type=password",
    { ["Content-Type"] = "application/json" },
    string.format('{"email":"bench-%d@example.com","password":"%s"}', i, password))
end

done = function(summary, latency, requests)
  io.write(string.format("non-2xx answers: %d\n", summary.errors.status))
end
