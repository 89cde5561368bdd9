-- Remove a member from the heartbeat index only if its score is still old (no newer heartbeat).
-- KEYS[1] heartbeat sorted set; ARGV: member, max_score
local score = redis.call("ZSCORE", KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call("ZREM", KEYS[1], ARGV[1])
end
return 0
