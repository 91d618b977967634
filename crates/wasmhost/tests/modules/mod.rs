//! Small misbehaving proxy-wasm modules, built with `wasm-encoder`: shared by the host's
//! limits tests and `rollgate try`'s (`crates/rollgate/tests/limits.rs`).

use wasm_encoder::{
    CodeSection, EntityType, ExportKind, ExportSection, Function, FunctionSection, ImportSection,
    Instruction, MemArg, MemorySection, MemoryType, Module, TypeSection, ValType,
};

/// A minimal proxy-wasm module (ABI marker, memory, allocator, `on_vm_start` and
/// `on_configure` answering true) whose `proxy_on_request_headers` runs `body`.
fn module(body: &[Instruction<'_>]) -> Vec<u8> {
    module_importing(&[], body)
}

/// [`module`] importing `env` functions `(name, number of i32 parameters)`, each returning an
/// i32: functions 0, 1, … in `body`.
fn module_importing(imported: &[(&str, usize)], body: &[Instruction<'_>]) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]); // 0: malloc
    types.ty().function([], []); // 1: ABI marker
    types
        .ty()
        .function([ValType::I32, ValType::I32, ValType::I32], [ValType::I32]); // 2: on_request_headers
    types
        .ty()
        .function([ValType::I32, ValType::I32], [ValType::I32]); // 3: on_vm_start, on_configure
    let mut imports = ImportSection::new();
    for (i, (name, params)) in imported.iter().enumerate() {
        types
            .ty()
            .function(vec![ValType::I32; *params], [ValType::I32]);
        imports.import("env", name, EntityType::Function(4 + i as u32));
    }
    let first = imported.len() as u32;
    let mut funcs = FunctionSection::new();
    for ty in [0, 1, 2, 3, 3] {
        funcs.function(ty);
    }
    let mut memory = MemorySection::new();
    memory.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    for (i, name) in [
        "malloc",
        "proxy_abi_version_0_2_1",
        "proxy_on_request_headers",
        "proxy_on_vm_start",
        "proxy_on_configure",
    ]
    .iter()
    .enumerate()
    {
        exports.export(name, ExportKind::Func, first + i as u32);
    }
    let mut code = CodeSection::new();
    let bodies: [&[Instruction<'_>]; 5] = [
        &[Instruction::I32Const(1024), Instruction::End],
        &[Instruction::End],
        body,
        &[Instruction::I32Const(1), Instruction::End],
        &[Instruction::I32Const(1), Instruction::End],
    ];
    for b in bodies {
        let mut f = Function::new([]);
        for i in b {
            f.instruction(i);
        }
        code.function(&f);
    }
    let mut m = Module::new();
    m.section(&types);
    if !imported.is_empty() {
        m.section(&imports);
    }
    m.section(&funcs)
        .section(&memory)
        .section(&exports)
        .section(&code);
    m.finish()
}

/// `loop { br 0 }`: never returns.
pub fn spin() -> Vec<u8> {
    use wasm_encoder::BlockType;
    module(&[
        Instruction::Loop(BlockType::Empty),
        Instruction::Br(0),
        Instruction::End,
        Instruction::I32Const(0),
        Instruction::End,
    ])
}

/// Runs `k` constant-and-drop pairs per request: `k` units of fuel more than `busy(0)`
/// (wasmtime charges a constant 1 and a drop nothing).
#[allow(dead_code)] // shared by test binaries that do not all use it
pub fn busy(k: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 * k + 2);
    for _ in 0..k {
        body.extend([Instruction::I32Const(1), Instruction::Drop]);
    }
    body.extend([Instruction::I32Const(0), Instruction::End]);
    module(&body)
}

/// Grows memory by 16 MiB at a time, forever (each grow fails once at 4 GiB).
pub fn hog() -> Vec<u8> {
    use wasm_encoder::BlockType;
    module(&[
        Instruction::Loop(BlockType::Empty),
        Instruction::I32Const(256),
        Instruction::MemoryGrow(0),
        Instruction::Drop,
        Instruction::Br(0),
        Instruction::End,
        Instruction::I32Const(0),
        Instruction::End,
    ])
}

/// Writes `grpc` at address 0 (the cluster name the flooding modules use).
const CLUSTER_AT_0: [Instruction<'static>; 3] = [
    Instruction::I32Const(0),
    Instruction::I32Const(0x6370_7267), // "grpc", little-endian
    Instruction::I32Store(MemArg {
        offset: 0,
        align: 2,
        memory_index: 0,
    }),
];

/// `proxy_grpc_stream(cluster "grpc", service "", method "", no metadata, token at 64)`.
const OPEN_STREAM: [Instruction<'static>; 10] = [
    Instruction::I32Const(0),
    Instruction::I32Const(4),
    Instruction::I32Const(0),
    Instruction::I32Const(0),
    Instruction::I32Const(0),
    Instruction::I32Const(0),
    Instruction::I32Const(0),
    Instruction::I32Const(0),
    Instruction::I32Const(64),
    Instruction::Call(0),
];

/// Opens gRPC streams to cluster `grpc` until `proxy_grpc_stream` answers anything but Ok.
#[allow(dead_code)] // the host's limits tests only
pub fn grpc_stream_flood() -> Vec<u8> {
    use wasm_encoder::BlockType;
    let mut body: Vec<Instruction<'_>> = CLUSTER_AT_0.to_vec();
    body.push(Instruction::Loop(BlockType::Empty));
    body.extend(OPEN_STREAM);
    body.extend([
        Instruction::I32Eqz,
        Instruction::BrIf(0),
        Instruction::End,
        Instruction::I32Const(0),
        Instruction::End,
    ]);
    module_importing(&[("proxy_grpc_stream", 9)], &body)
}

/// Opens one gRPC stream (token 6) and sends it 64 KiB messages until `proxy_grpc_send`
/// answers anything but Ok.
#[allow(dead_code)] // the host's limits tests only
pub fn grpc_send_flood() -> Vec<u8> {
    use wasm_encoder::BlockType;
    let mut body: Vec<Instruction<'_>> = CLUSTER_AT_0.to_vec();
    body.extend(OPEN_STREAM);
    body.extend([
        Instruction::Drop,
        Instruction::Loop(BlockType::Empty),
        Instruction::I32Const(6),
        Instruction::I32Const(0),
        Instruction::I32Const(65536),
        Instruction::I32Const(0),
        Instruction::Call(1),
        Instruction::I32Eqz,
        Instruction::BrIf(0),
        Instruction::End,
        Instruction::I32Const(0),
        Instruction::End,
    ]);
    module_importing(&[("proxy_grpc_stream", 9), ("proxy_grpc_send", 4)], &body)
}
