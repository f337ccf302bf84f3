#!/usr/bin/env node
'use strict';
/**
 * The embedsearch flow from Node.js: create a table whose text column is embedded by the
 * server's sentence-transformers function, add rows as JSON, search by text, read rows back
 * with a filter. Prints one JSON object with what each step returned.
 *
 *   node example.js [--address 127.0.0.1:50050] [--table node_docs] [--api-key TOKEN]
 */
const { parseArgs } = require('node:util');
const { connect, binding, describeError } = require('./index.js');

const ROWS = [
  { id: 1, text: 'The cat purrs on the warm windowsill.' },
  { id: 2, text: 'Stock markets fell sharply on Monday.' },
  { id: 3, text: 'A recipe for sourdough bread with a crisp crust.' },
];

async function main() {
  const { values } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.EMBEDSEARCH_ADDRESS || '127.0.0.1:50050' },
      table: { type: 'string', default: 'node_docs' },
      'api-key': { type: 'string', default: process.env.EMBEDSEARCH_API_KEY || '' },
      query: { type: 'string', default: 'a kitten resting in the sun' },
    },
  });
  const db = connect(values.address, { apiKey: values['api-key'] || undefined });
  try {
    const info = await db.createTable(
      values.table,
      [
        { name: 'id', type: 'int64', nullable: false },
        { name: 'text', type: 'string', nullable: true },
      ],
      [binding('text', 'vector', 'sentence-transformers')],
      { overwrite: true },
    );
    const written = await db.add(values.table, ROWS);
    const results = await db.search(values.table, values.query, {
      k: 3,
      columns: ['id', 'text'],
    });
    // The table's rows without a query, streamed as Arrow record batches.
    const read = [];
    for await (const row of db.read(values.table, { filter: 'id > 1', columns: ['id', 'text'] })) {
      read.push(row);
    }
    const output = {
      table: info.name,
      columns: info.columns.map((c) => `${c.name}:${c.type}`),
      rows_inserted: Number(written.rows_inserted),
      results,
      read,
    };
    process.stdout.write(`${JSON.stringify(output)}\n`);
  } finally {
    db.close();
  }
}

main().catch((error) => {
  // e.g. "embedsearch: NOT_FOUND TABLE_NOT_FOUND table=docs: table 'docs' does not exist"
  process.stderr.write(`embedsearch: ${describeError(error)}\n`);
  process.exitCode = 1;
});
