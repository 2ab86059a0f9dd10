#include "wb_record.h"
// The input log format is in the header; this file gives the module something to build.
int wb_record_format_version = 1;
