# Runs fpga/hls/run_hls.tcl with the Vitis HLS commands stubbed out: checks the script's argument
# handling, that every file it adds exists, and the steps it runs. (ctest, when tclsh is found.)
set failures 0
proc check {cond msg} { if {!$cond} { puts "FAIL: $msg"; incr ::failures } }
proc open_project {args} { lappend ::calls open_project }
proc set_top {name} { set ::top $name }
proc add_files {args} {
  set files [lindex $args [expr {[lindex $args 0] eq "-tb" ? 1 : 0}]]
  foreach f $files { check [file exists $f] "add_files: no such file $f" }
}
proc open_solution {args} {}
proc set_part {part} { set ::part $part }
proc create_clock {args} {}
foreach step {csim_design csynth_design cosim_design export_design} {
  proc $step {args} "lappend ::calls $step"
}
rename exit real_exit
proc exit {args} {}

set script [lindex $argv 0]
foreach {bits top} {32 zipml_sgd_f32 8 zipml_sgd_q8 4 zipml_sgd_q4 2 zipml_sgd_q2 1 zipml_sgd_q1} {
  set ::calls {}
  set argv [list $bits csim,cosim]
  source $script
  check [expr {$::top eq $top}] "bits $bits: top $::top, expected $top"
  check [expr {$::calls eq {open_project csim_design cosim_design}}] "bits $bits: steps $::calls"
}
set ::calls {}
set argv {}
source $script
check [expr {$::top eq "zipml_sgd_q2" && $::part eq "xcu250-figd2104-2L-e"}] "defaults: $::top $::part"
check [expr {$::calls eq {open_project csim_design csynth_design cosim_design}}] "default steps: $::calls"
puts [expr {$failures ? "FAIL" : "PASS"}]
real_exit [expr {$failures ? 1 : 0}]
