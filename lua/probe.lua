-- Readiness probe: proves that scripts actually run (a PING does not). Returns ARGV[1].
return ARGV[1]
