-- rollgate bench: the request mix, the same for every case.
--   Host pro.coding on every request;
--   x-user-id: one of 10,000 users, on 95 % of requests (5 % carry no user id);
--   location: shenzhen (the A/B header that routes to canary) on 10 %, independently.
-- Requests are formatted once in init() and replayed in a loop, so the script costs wrk
-- almost nothing per request.

local USERS = 10000
local POOL = 50000
local pool = {}
local n = 0

function init(args)
  math.randomseed(os.time() + (tonumber(args[1]) or 0))
  for i = 1, POOL do
    local h = { ["Host"] = "pro.coding" }
    if math.random() >= 0.05 then
      h["x-user-id"] = "user-" .. math.random(1, USERS)
    end
    if math.random() < 0.10 then
      h["location"] = "shenzhen"
    end
    pool[i] = wrk.format("GET", "/api/items", h)
  end
end

function request()
  n = n + 1
  if n > POOL then
    n = 1
  end
  return pool[n]
end
