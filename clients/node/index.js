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
 */
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = process.env.EMBEDSEARCH_PROTOS || path.resolve(__dirname, '..', '..', 'protos');

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

  /** One unary call as a promise; a failure rejects with the gRPC error (code, details). */
  call(method, request) {
    const deadline = new Date(Date.now() + this.deadlineMs);
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata, { deadline }, (error, reply) =>
        error ? reject(error) : resolve(reply),
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

/** A client of the gateway at address (host:port). */
function connect(address, options) {
  return new Client(address, options);
}

module.exports = { connect, binding, loadGateway, toStruct, Client };
