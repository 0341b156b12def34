# Used by scripts/test.sh.
# Prints each failed test of a .trx file with its message and the top of its stack trace.
function unescape(s) {
  gsub(/&quot;/, "\"", s); gsub(/&apos;/, "'", s); gsub(/&lt;/, "<", s); gsub(/&gt;/, ">", s)
  gsub(/&#xD;/, "", s); gsub(/&#xA;/, "\n", s); gsub(/&amp;/, "\\&", s)
  return s
}
/<UnitTestResult / {
  failed = ($0 ~ /outcome="Failed"/)
  if (failed) {
    name = $0; sub(/.*testName="/, "", name); sub(/".*/, "", name)
    print "FAILED " unescape(name); shown = 0
  }
  part = ""
}
failed && /<Message>/ { part = "message" }
failed && /<StackTrace>/ { part = "stack"; stack = 0 }
failed && part != "" {
  line = $0; sub(/.*<(Message|StackTrace)>/, "", line); sub(/<\/(Message|StackTrace)>.*/, "", line)
  if (part == "stack") { if (stack++ < 6) print "    " unescape(line) }
  else if (shown++ < 60) print "    " unescape(line)
}
/<\/Message>|<\/StackTrace>/ { part = "" }
/<\/UnitTestResult>/ { failed = 0 }
