'use strict';
/**
 * A small Node.js client for the embedsearch gateway (embedsearch.v1.Gateway).
 *
 * It loads the contracts from protos/ at run time with @grpc/proto-loader: no generated code.
 * Rows go over the wire as JSON (RowData.json) and results come back as JSON, so no Arrow
 * library is needed.
 *
 *   const { connect, binding } = require('./index.js');
 *   const db = connect('127.0.0.1:50050');
 *   await db.createTable('docs', [{ name: 'text', type: 'string' }],
 *                        [binding('text', 'vector', 'sentence-transformers')]);
 *   await db.add('docs', [{ text: 'hello' }]);
 *   const rows = await db.search('docs', 'hi', { k: 5 });
 *
 * A failed call rejects with grpc-js's error (code, details) plus what the server's
 * google.rpc.Status says (see the reasons listed in protos/embedsearch/v1/common.proto):
 * `reason` (e.g. 'TABLE_NOT_FOUND'), `errorMetadata` (e.g. { table: 'docs' }), `retryDelayMs`
 * (back-off asked for by OVERLOADED) and `fieldViolations` ([{ field, description }]).
 */
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const { tableFromIPC } = require('apache-arrow');

const PROTO_ROOT = process.env.EMBEDSEARCH_PROTOS || path.resolve(__dirname, '..', '..', 'protos');
// google/rpc/status.proto and error_details.proto, as googleapis ships them (the copies here are
// checked against those of the googleapis-common-protos package by tests/test_polyglot.py).
const GOOGLE_RPC_PROTOS = path.join(__dirname, 'protos');
const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
const ERROR_DOMAIN = 'embedsearch.v1';

/** The Gateway service constructor, built from the .proto files under protoRoot. */
function loadGateway(protoRoot = PROTO_ROOT) {
  const definition = protoLoader.loadSync('embedsearch/v1/gateway.proto', {
    includeDirs: [protoRoot],
    keepCase: true, // field names as the protos spell them: source_column, result_format...
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).embedsearch.v1.Gateway;
}

let richTypes;

/** The google.rpc message types that error details are decoded with, loaded once. */
function googleRpcTypes() {
  if (!richTypes) {
    const root = new protobuf.Root();
    root.resolvePath = (origin, target) => path.join(GOOGLE_RPC_PROTOS, target);
    root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], {
      keepCase: true,
    });
    richTypes = {
      Status: root.lookupType('google.rpc.Status'),
      ErrorInfo: root.lookupType('google.rpc.ErrorInfo'),
      RetryInfo: root.lookupType('google.rpc.RetryInfo'),
      BadRequest: root.lookupType('google.rpc.BadRequest'),
    };
  }
  return richTypes;
}

/**
 * What a failed call's google.rpc.Status (the grpc-status-details-bin trailer) says:
 * { reason, domain, metadata, retryDelayMs, fieldViolations }; reason is '' when the error
 * carries no details (as errors of gRPC's own, like UNAVAILABLE when the server is down).
 */
function errorDetails(error) {
  const found = { reason: '', domain: '', metadata: {}, retryDelayMs: null, fieldViolations: [] };
  const [bytes] = (error.metadata && error.metadata.get(STATUS_DETAILS_KEY)) || [];
  if (!bytes) return found;
  const types = googleRpcTypes();
  const decode = (type, value) => type.toObject(type.decode(value), { longs: Number });
  for (const detail of decode(types.Status, bytes).details || []) {
    const typeName = detail.type_url.slice(detail.type_url.lastIndexOf('/') + 1);
    if (typeName === 'google.rpc.ErrorInfo') {
      const info = decode(types.ErrorInfo, detail.value);
      Object.assign(found, { reason: info.reason, domain: info.domain });
      found.metadata = info.metadata || {};
    } else if (typeName === 'google.rpc.RetryInfo') {
      const delay = decode(types.RetryInfo, detail.value).retry_delay || {};
      found.retryDelayMs = (delay.seconds || 0) * 1000 + (delay.nanos || 0) / 1e6;
    } else if (typeName === 'google.rpc.BadRequest') {
      const violations = decode(types.BadRequest, detail.value).field_violations || [];
      found.fieldViolations = violations.map(({ field, description }) => ({ field, description }));
    }
  }
  return found;
}

/** The error of a failed call with its details attached (reason, errorMetadata, ...). */
function withDetails(error) {
  const found = errorDetails(error);
  error.reason = found.domain === ERROR_DOMAIN ? found.reason : '';
  error.errorMetadata = found.metadata;
  error.retryDelayMs = found.retryDelayMs;
  error.fieldViolations = found.fieldViolations;
  return error;
}

/** One line for a failed call: code name, reason and metadata, then the server's message. */
function describeError(error) {
  if (error.code === undefined) return error.message;
  const parts = [grpc.status[error.code] || `code ${error.code}`];
  if (error.reason) parts.push(error.reason);
  const metadata = Object.entries(error.errorMetadata || {});
  if (metadata.length) parts.push(metadata.map(([key, value]) => `${key}=${value}`).join(' '));
  const violations = (error.fieldViolations || []).map((v) => `${v.field}: ${v.description}`);
  return [`${parts.join(' ')}: ${error.details}`, ...violations].join('\n  ');
}

/** A JSON value as a google.protobuf.Value message. */
function toValue(value) {
  if (value === null || value === undefined) return { null_value: 'NULL_VALUE' };
  if (typeof value === 'number') return { number_value: value };
  if (typeof value === 'boolean') return { bool_value: value };
  if (typeof value === 'string') return { string_value: value };
  if (Array.isArray(value)) return { list_value: { values: value.map(toValue) } };
  return { struct_value: toStruct(value) };
}

/** A plain object as a google.protobuf.Struct message. */
function toStruct(object) {
  const fields = {};
  for (const [key, value] of Object.entries(object)) fields[key] = toValue(value);
  return { fields };
}

/**
 * A binding of a source column to a vector column through an embedding function, as
 * LanceDB's SourceField/VectorField pair: provider is a registry name, args its create()
 * arguments (secrets as "$env:NAME" references, never literal keys).
 */
function binding(sourceColumn, vectorColumn, provider = 'sentence-transformers', args = {}) {
  return {
    function: { provider, args: toStruct(args) },
    source_column: sourceColumn,
    vector_column: vectorColumn,
  };
}

class Client {
  /**
   * @param {string} address host:port of the gateway
   * @param {object} [options]
   * @param {string} [options.apiKey] bearer token, when the gateway requires one
   * @param {string} [options.tlsCaFile] PEM CA of a TLS gateway
   * @param {number} [options.deadlineMs] deadline of each call (default 120 s)
   */
  constructor(address, { apiKey, tlsCaFile, deadlineMs = 120000 } = {}) {
    const Gateway = loadGateway();
    const credentials = tlsCaFile
      ? grpc.credentials.createSsl(fs.readFileSync(tlsCaFile))
      : grpc.credentials.createInsecure();
    this.stub = new Gateway(address, credentials);
    this.metadata = new grpc.Metadata();
    if (apiKey) this.metadata.set('authorization', `Bearer ${apiKey}`);
    this.deadlineMs = deadlineMs;
  }

  /**
   * One unary call as a promise; a failure rejects with the gRPC error (code, details) and
   * its details (reason, errorMetadata, retryDelayMs, fieldViolations).
   */
  call(method, request) {
    const deadline = new Date(Date.now() + this.deadlineMs);
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata, { deadline }, (error, reply) =>
        error ? reject(withDetails(error)) : resolve(reply),
      );
    });
  }

  /** Create a table from column specs ({name, type, nullable}) and bindings. */
  createTable(name, columns, bindings, { overwrite = false } = {}) {
    const mode = overwrite ? 'CREATE_MODE_OVERWRITE' : 'CREATE_MODE_CREATE';
    return this.call('CreateTable', { name, columns, bindings, mode });
  }

  /** Add rows given as plain objects; missing vectors are embedded by the gateway. */
  add(table, rows) {
    return this.call('Add', { table, rows: { json: JSON.stringify(rows) } });
  }

  /** Search by text, nearest first; rows as plain objects with `_distance`. */
  async search(table, text, { k = 10, columns = [], filter = '' } = {}) {
    const reply = await this.call('Search', {
      table,
      text,
      k,
      columns,
      filter,
      result_format: 'ROW_FORMAT_JSON',
    });
    return JSON.parse(reply.rows.json);
  }

  /**
   * Rows of a table without a query, in storage order, streamed: the gateway sends one Arrow
   * record batch per message, and each is yielded as plain objects before the next is read.
   * Vector cells come as arrays of numbers.
   */
  async *read(table, { filter = '', columns = [], limit = 0, offset = 0, version = 0 } = {}) {
    const call = this.stub.Read({ table, filter, columns, limit, offset, version }, this.metadata);
    try {
      for await (const reply of call) {
        for (const row of tableFromIPC(reply.arrow_ipc).toArray()) {
          yield Object.fromEntries(
            Object.entries(row.toJSON()).map(([key, value]) => [key, plainCell(value)]),
          );
        }
      }
    } catch (error) {
      throw withDetails(error);
    }
  }

  async listTables() {
    return (await this.call('ListTables', {})).names;
  }

  dropTable(name) {
    return this.call('DropTable', { name, ignore_missing: true });
  }

  close() {
    this.stub.close();
  }
}

/** An Arrow cell as JSON would have it: lists as arrays, 64-bit integers as numbers. */
function plainCell(value) {
  if (typeof value === 'bigint') return Number(value);
  if (value && typeof value.toArray === 'function') return Array.from(value.toArray(), plainCell);
  return value;
}

/** A client of the gateway at address (host:port). */
function connect(address, options) {
  return new Client(address, options);
}

module.exports = { connect, binding, loadGateway, toStruct, errorDetails, describeError, Client };
