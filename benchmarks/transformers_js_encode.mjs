// transformers.js's AutoTokenizer on a tokenizer folder: node transformers_js_encode.mjs
// FOLDER TEXTS.json IDS.json (texts as a JSON list in, their ids without special tokens out).
// Run from a folder where `npm install --ignore-scripts @huggingface/transformers` was run.
import fs from 'fs';
import path from 'path';
import { AutoTokenizer, env } from '@huggingface/transformers';

const [folder, textsFile, idsFile] = process.argv.slice(2);
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(folder)) + '/';
const tokenizer = await AutoTokenizer.from_pretrained(path.basename(path.resolve(folder)));
const texts = JSON.parse(fs.readFileSync(textsFile, 'utf8'));
const ids = texts.map((text) => tokenizer.encode(text, { add_special_tokens: false }));
fs.writeFileSync(idsFile, JSON.stringify(ids));
