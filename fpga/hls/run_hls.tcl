# Vitis HLS: C simulation, synthesis and C/RTL co-simulation of one precision's design.
#
#   vitis_hls -f fpga/hls/run_hls.tcl -tclargs <bits> [steps] [part] [clock_ns]
#
#   bits      32 (float), 8, 4, 2 or 1: the top zipml_sgd_f32 / _q8 / _q4 / _q2 / _q1 (hls/sgd_top.cpp)
#   steps     comma-separated subset of csim,csynth,cosim,export (default csim,csynth,cosim)
#   part      default xcu250-figd2104-2L-e (Alveo U250)
#   clock_ns  default 3.33 (300 MHz)
#
# The test bench (hls/sgd_tb.cpp, with the host layout and the bit-exact reference) runs the top on
# small problems for every loss and two batch sizes and compares every epoch's model with the
# reference; it returns non-zero on a mismatch, which fails csim and cosim. Run from anywhere: the
# paths are relative to this script. Reports land in ./zipml_sgd_<bits>/solution1/.
# Nothing here has been run: no Vitis installation was available (see fpga/README.md).

set here [file dirname [file normalize [info script]]]
set repo [file normalize [file join $here .. ..]]

set bits [expr {[llength $argv] > 0 ? [lindex $argv 0] : 2}]
set steps [split [expr {[llength $argv] > 1 ? [lindex $argv 1] : "csim,csynth,cosim"}] ,]
set part [expr {[llength $argv] > 2 ? [lindex $argv 2] : "xcu250-figd2104-2L-e"}]
set clock_ns [expr {[llength $argv] > 3 ? [lindex $argv 3] : 3.33}]

array set tops {32 zipml_sgd_f32 8 zipml_sgd_q8 4 zipml_sgd_q4 2 zipml_sgd_q2 1 zipml_sgd_q1}
if {![info exists tops($bits)]} {
  puts "run_hls.tcl: bits must be one of 32, 8, 4, 2, 1; got '$bits'"
  exit 1
}

open_project -reset "zipml_sgd_$bits"
set_top $tops($bits)
# The kernel is C++14 (no proprietary header); the test bench and the host code it uses are C++17.
add_files [file join $repo fpga hls sgd_top.cpp] -cflags "-std=c++14 -I$repo"
add_files -tb [list [file join $repo fpga hls sgd_tb.cpp] [file join $repo fpga host layout.cpp] \
                    [file join $repo fpga reference sgd_reference.cpp]] \
          -cflags "-std=c++17 -I$repo -DZIPML_TB_BITS=$bits"

open_solution -reset solution1 -flow_target vitis
set_part $part
create_clock -period $clock_ns -name default

if {[lsearch $steps csim] >= 0} { csim_design }
if {[lsearch $steps csynth] >= 0} { csynth_design }
if {[lsearch $steps cosim] >= 0} { cosim_design -trace_level none }
if {[lsearch $steps export] >= 0} { export_design -format xo }
exit
