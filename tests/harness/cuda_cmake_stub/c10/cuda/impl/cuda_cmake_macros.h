// Stands in for the header a CUDA build of torch generates (absent from the CPU wheel) so that
// tests/test_csrc_checks.py can syntax-check csrc/mla_api.cpp; it defines nothing the binding uses.
#pragma once
