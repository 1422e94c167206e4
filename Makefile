# cinfer - plain Makefile.  `make run` and `make test` do all set-up on a
# fresh Debian 12 machine (deps -> model -> build); see README.md.

CC       ?= gcc
CXX      ?= g++
CLANG    ?= clang
CLANGXX  ?= clang++
PYTHON   ?= python3
# PPU=1: the same binary with the PPU backend (device/ppu/, CUDA C) built in, from its own
# object tree; NVCC and PPU_ARCH (compute capabilities) choose the compiler and targets.
PPU      ?= 0
NVCC     ?= nvcc
PPU_ARCH ?= 80 90
ifeq ($(PPU),1)
BUILD    ?= build/ppu
endif
BUILD    ?= build
BIN      := bin/cinfer
VERSION  := 0.1.0
FUZZ_TIME ?= 60

PKGS     := libpcre2-8 sentencepiece libcjson libuv libmicrohttpd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null)

WARN     := -Wall -Wextra -Werror
CFLAGS   ?= -O2 -g
CXXFLAGS ?= -O2 -g
SAN      ?=
ALL_CFLAGS   := -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) $(SAN) -I. $(PKG_CFLAGS) \
                -DCINFER_VERSION='"$(VERSION)"' -MMD -MP
ALL_CXXFLAGS := -std=c++17 $(WARN) $(CXXFLAGS) $(SAN) -I. $(PKG_CFLAGS) -MMD -MP
LDLIBS   := $(PKG_LIBS) -lstdc++ -lm -lpthread

MODULES  := util engine tokenizer template grammar kv-cache device device/cpu server cli
LIB_C    := $(filter-out cli/main.c,$(foreach m,$(MODULES),$(wildcard $(m)/*.c)))
LIB_CC   := $(foreach m,$(MODULES),$(wildcard $(m)/*.cc))
LIB_OBJ  := $(LIB_C:%.c=$(BUILD)/%.o) $(LIB_CC:%.cc=$(BUILD)/%.o)
MAIN_OBJ := $(BUILD)/cli/main.o
ifeq ($(PPU),1)
CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(shell command -v $(NVCC))))
PPU_CU   := $(wildcard device/ppu/*.cu)
LIB_OBJ  += $(PPU_CU:%.cu=$(BUILD)/%.o)
ALL_CFLAGS += -DCINFER_HAVE_PPU
# the CUDA runtime linked statically: the binary needs only the driver where it runs
LDLIBS   += -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt
NVCC_FLAGS := -std=c++17 -O2 -g -I. -DCINFER_HAVE_PPU -Werror all-warnings \
              -Xcompiler -Wall,-Wextra,-Werror \
              $(foreach a,$(PPU_ARCH),-gencode arch=compute_$(a),code=sm_$(a))
endif
# bin/cinfer is relinked when the flavour (PPU=0 or 1) changes
FLAVOUR  := bin/.flavour
$(shell mkdir -p bin; [ "$$(cat $(FLAVOUR) 2>/dev/null)" = "$(PPU)" ] || echo $(PPU) > $(FLAVOUR))
TEST_C   := $(wildcard tests/unit/*.c)
TEST_OBJ := $(TEST_C:%.c=$(BUILD)/%.o)
TEST_BIN := $(BUILD)/tests/check_all
LIBCINFER := $(BUILD)/libcinfer.a

MODEL_FILE := models/SmolLM2-135M-Instruct.Q4_1.gguf
export CINFER_MODEL ?= $(CURDIR)/$(MODEL_FILE)

.PHONY: all deps deps-test model model-qwen test test-models check integration run asan fuzz fuzz-build clean format help ppu-check ppu-bundle deploy-test deploy-check
all: $(BIN)

help:
	@echo "make run | make test | make test-models | make deps | make model | make asan | make fuzz | make format | make clean"

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(FILE_CFLAGS) -c $< -o $@

# The x86 SIMD kernels (device/cpu/avx2.c): one build per instruction set, picked at run
# time by cpuid; and for the tests, its VNNI build on SIMDe's stand-ins (libsimde-dev), which
# checks that code on a CPU without VNNI.
ifeq ($(shell uname -m),x86_64)
ALL_CFLAGS += -DCINFER_HAVE_AVX2
X86_avx2       := -mavx2 -mfma -mf16c
X86_avx512     := $(X86_avx2) -mavx512f -mavx512bw -mavx512vl
X86_avxvnni    := $(X86_avx2) -mavxvnni -DCPU_VNNI=1
X86_avx512vnni := $(X86_avx512) -mavx512vnni -DCPU_VNNI=2
$(BUILD)/device/cpu/avx2.o: FILE_CFLAGS = $(X86_avx2)
X86_OBJ  := $(foreach v,avx512 avxvnni avx512vnni,$(BUILD)/device/cpu/avx2-$(v).o)
LIB_OBJ  += $(X86_OBJ)
$(X86_OBJ): $(BUILD)/device/cpu/avx2-%.o: device/cpu/avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(X86_$*) -DCPU_KERNELS_NAME=$* -c $< -o $@
TEST_OBJ += $(BUILD)/tests/unit/avx2-vnni_emu.o
$(BUILD)/tests/unit/avx2-vnni_emu.o: device/cpu/avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(X86_avx2) -Wno-psabi -DCPU_VNNI=1 -DCPU_EMULATE -DCPU_KERNELS_NAME=vnni_emu \
	    -c $< -o $@
endif

$(BUILD)/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) $(ALL_CXXFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu $(wildcard device/ppu/*.h device/ppu/*.cuh) device/dev.h util/quant.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(LIBCINFER): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# linked by the C++ driver: libsentencepiece and tokenizer/spm_c.cc are C++
$(BIN): $(MAIN_OBJ) $(LIBCINFER) $(FLAVOUR)
	@mkdir -p $(dir $@)
	$(CXX) $(SAN) -o $@ $(MAIN_OBJ) $(LIBCINFER) $(LDLIBS)

$(TEST_BIN): $(TEST_OBJ) $(LIBCINFER)
	@mkdir -p $(dir $@)
	$(CXX) $(SAN) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)

# every dev_op on the PPU against the CPU (tests/ppu/check_ops.c): needs only libc, libm and
# the static CUDA runtime, so it runs on a GPU machine without our Debian libraries
$(BUILD)/check_ops: $(BUILD)/tests/ppu/check_ops.o $(LIBCINFER)
	$(CXX) -o $@ $^ -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lpthread -lm

# the whole model on a backend against the CPU (tests/ppu/check_model.c), on one GGUF
$(BUILD)/check_model: $(BUILD)/tests/ppu/check_model.o $(LIBCINFER)
	$(CXX) -o $@ $^ $(if $(filter 1,$(PPU)),-L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt) -lpthread -lm

# random-weight GGUFs of real shapes (tests/ppu/make_gguf.c), made where the real models cannot go
$(BUILD)/make_gguf: $(BUILD)/tests/ppu/make_gguf.o $(BUILD)/tests/unit/gguf_writer.o $(LIBCINFER)
	$(CXX) -o $@ $^ -lm

# the device's own memory bandwidth (tests/ppu/membw.cu), what batch-1 decode is held against
$(BUILD)/membw: tests/ppu/membw.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -o $@ $< -cudart static

# What travels to a GPU machine (device/ppu/check.sh): the PPU flavour, check_ops, and the
# shared libraries of cinfer that are not part of a bare system (libc and friends stay).
ppu-bundle:
	$(MAKE) --no-print-directory PPU=1 BIN=build/ppu/cinfer build/ppu/cinfer build/ppu/check_ops \
	    build/ppu/check_model build/ppu/make_gguf build/ppu/membw
	rm -rf build/ppu/bundle && mkdir -p build/ppu/bundle/lib
	cp build/ppu/cinfer build/ppu/check_ops build/ppu/check_model build/ppu/make_gguf \
	    build/ppu/membw device/ppu/check.sh bench/serve_load.py \
	    build/ppu/bundle/
	ldd build/ppu/cinfer | awk '$$3 ~ /^\// {print $$3}' | \
	    grep -vE '/(libc|libm|libpthread|libdl|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' | \
	    xargs -r -I{} cp -L {} build/ppu/bundle/lib/
	du -sh build/ppu/bundle

# The PPU flavour where nvcc exists: built with warnings as errors into build/ppu, then its
# host-side checks (device choice, the errors without a device) by tests/ppu_host.sh.
ppu-check:
	@if command -v $(NVCC) >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory PPU=1 BIN=build/ppu/cinfer build/ppu/cinfer \
	        build/ppu/check_ops build/ppu/check_model build/ppu/make_gguf build/ppu/membw && \
	    sh tests/ppu_host.sh build/ppu/cinfer && \
	    { rc=0; build/ppu/check_ops || rc=$$?; [ $$rc = 0 ] || [ $$rc = 77 ]; } && \
	    sh tests/ppu_isa.sh $(NVCC) $(PPU_ARCH); \
	else echo "SKIP: no $(NVCC) here: the PPU flavour is neither built nor checked"; fi

deps:
	@sh scripts/deps.sh

# make test's extra packages (the CORS test's headless browser)
deps-test: deps
	@sh scripts/deps.sh test

model: deps
	@sh scripts/fetch-model.sh $(MODEL_FILE)

# the second real model, for the benchmarks and its fixtures (not needed by make test)
QWEN_FILE := models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
model-qwen: deps
	@sh scripts/fetch-qwen.sh $(QWEN_FILE)

# Unit suites run in one Check runner, so the output ends with its summary.
check: $(BIN) $(TEST_BIN)
	CINFER_BIN=$(CURDIR)/$(BIN) $(TEST_BIN)

# A real server driven by the openai package and by the README's curl examples.
integration: $(BIN)
	CINFER_BIN=$(CURDIR)/$(BIN) sh tests/integration/run.sh
	CINFER_BIN=$(CURDIR)/$(BIN) sh tests/smoke.sh

# Tool calling on the second real model, with its figures printed (also part of make test).
test-models: deps model model-qwen $(BIN)
	CINFER_BIN=$(CURDIR)/$(BIN) sh tests/integration/run.sh tests/integration/test_qwen_tools.py -s

# The unit suites run last, so the output ends with Check's summary line.
test: deps-test model model-qwen
	@$(MAKE) --no-print-directory integration
	@sh deploy/check.sh
	@$(MAKE) --no-print-directory ppu-check
	@$(MAKE) --no-print-directory check

# The light deployment checks (also in make test): haproxy -c, nginx -t, the Kubernetes
# manifests against the schemas, checkov over them and the Dockerfiles.
deploy-check: deps
	@sh deploy/check.sh

# The deployment under load (deploy/deploy-test.sh): the image built with podman, two
# replicas behind HAProxy and nginx, kill -9, SIGTERM, rolling restart.  Needs root.
deploy-test: deps
	@sh deploy/deploy-test.sh

run: deps model
	@$(MAKE) --no-print-directory $(BIN)
	$(BIN) serve -m $(MODEL_FILE) --port 8080

# The same suites under AddressSanitizer + UndefinedBehaviorSanitizer, in
# their own build tree (LeakSanitizer included).
# CINFER_SLOWDOWN: the tests' timing bounds stretch by this factor for a sanitizer build.
asan: deps-test model model-qwen
	@CINFER_SLOWDOWN=4 $(MAKE) --no-print-directory BUILD=build/asan BIN=build/asan/cinfer \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	    CFLAGS="-O1 -g" CXXFLAGS="-O1 -g" integration check

# libFuzzer targets, built with clang; each runs for FUZZ_TIME seconds.
FUZZ_TARGETS := gguf tok_bpe tok_spm request grammar template
FUZZ_SAN  := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
fuzz: deps model
	@$(MAKE) --no-print-directory BUILD=build/fuzz CC=$(CLANG) CXX=$(CLANGXX) \
	    SAN="$(FUZZ_SAN)" CFLAGS="-O1 -g" CXXFLAGS="-O1 -g" fuzz-build
	@sh scripts/fuzz.sh build/fuzz $(FUZZ_TIME) $(FUZZ_TARGETS)

fuzz-build: $(foreach t,$(FUZZ_TARGETS),$(BUILD)/fuzz_$(t))

$(BUILD)/fuzz_%: $(BUILD)/tests/fuzz/fuzz_%.o $(LIBCINFER)
	$(CXX) $(SAN) -fsanitize=fuzzer $^ -o $@ $(LDLIBS)

format:
	clang-format -i $(wildcard */*.c */*.h */*.cc device/*/*.c device/*/*.h tests/*/*.c tests/*/*.h)

clean:
	rm -rf build bin

-include $(LIB_OBJ:.o=.d) $(MAIN_OBJ:.o=.d) $(TEST_OBJ:.o=.d)
