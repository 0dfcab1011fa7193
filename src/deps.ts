/**
 * The third-party packages the library itself needs, with their versions, in one place. Full
 * `npm:` specifiers (not bare names through deno.json's import map) so that mod.ts works when an
 * app with no configuration of its own imports it by path or URL, and when it is published.
 */
export { Hono } from "npm:hono@^4.13.19";
export { Template } from "npm:@huggingface/jinja@^0.5.1";
