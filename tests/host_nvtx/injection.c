/* A minimal NVTX injection library, written to the layout of NVTX v3's nvtxDetail/nvtxTypes.h, for
 * tests/nvtx_injection.rs: it attaches the way Nsight Systems does (InitializeInjectionNvtx2, the
 * callbacks export table, the CORE module's function table) and logs each push and pop to the file
 * named by DPGAN_NVTX_TEST_LOG, one line per event. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*FunctionPointer)(void);
typedef FunctionPointer** FunctionTable;
typedef const void* (*GetExportTable)(uint32_t id);
typedef struct {
  size_t struct_size;
  int (*GetModuleFunctionTable)(int module, FunctionTable* out_table, unsigned int* out_size);
} ExportTableCallbacks;
typedef struct {
  size_t struct_size;
  uint32_t version;
  uint32_t reserved0;
  void (*SetInjectionNvtxVersion)(uint32_t version);
} ExportTableVersionInfo;

enum { ETID_CALLBACKS = 1, ETID_VERSIONINFO = 3 };
enum { MODULE_CORE = 1, MODULE_CORE2 = 5, CBID_CORE_SIZE = 16, CBID_RANGE_PUSH_A = 9, CBID_RANGE_POP = 11 };

static FILE* log_file;

static int push_a(const char* message) {
  fprintf(log_file, "push %s\n", message);
  fflush(log_file);
  return 0;
}

static int pop(void) {
  fprintf(log_file, "pop\n");
  fflush(log_file);
  return 0;
}

int InitializeInjectionNvtx2(GetExportTable get_export_table) {
  const char* path = getenv("DPGAN_NVTX_TEST_LOG");
  if (!path || !(log_file = fopen(path, "w"))) return 0;
  const ExportTableCallbacks* callbacks = (const ExportTableCallbacks*)get_export_table(ETID_CALLBACKS);
  const ExportTableVersionInfo* version = (const ExportTableVersionInfo*)get_export_table(ETID_VERSIONINFO);
  if (!callbacks || callbacks->struct_size < sizeof(ExportTableCallbacks)) return 0;
  if (!version || version->struct_size < sizeof(ExportTableVersionInfo)) return 0;
  version->SetInjectionNvtxVersion(3);
  fprintf(log_file, "init version %u\n", version->version);
  FunctionTable table = 0;
  unsigned int size = 0;
  if (!callbacks->GetModuleFunctionTable(MODULE_CORE, &table, &size) || size != CBID_CORE_SIZE) return 0;
  /* A tool writes every slot it implements; the entries between the ids must be writable too. */
  for (unsigned int id = 1; id < size; ++id) *table[id] = 0;
  *table[CBID_RANGE_PUSH_A] = (FunctionPointer)push_a;
  *table[CBID_RANGE_POP] = (FunctionPointer)pop;
  /* Tools query the other modules as well. */
  FunctionTable core2 = 0;
  unsigned int core2_size = 0;
  if (!callbacks->GetModuleFunctionTable(MODULE_CORE2, &core2, &core2_size) || core2_size != 16) return 0;
  if (callbacks->GetModuleFunctionTable(99, &core2, &core2_size)) return 0;
  return 1;
}
