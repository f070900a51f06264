// ESLint's flat config for the web client: the recommended rules, browser + worker globals, ES modules.

import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["node_modules/"] },
  js.configs.recommended,
  {
    files: ["**/*.js"],
    languageOptions: {
      ecmaVersion: 2024,
      sourceType: "module",
      globals: { ...globals.browser },
    },
    rules: {
      eqeqeq: ["error", "always", { null: "ignore" }],
      "no-unused-vars": ["error", { args: "after-used", caughtErrors: "none" }],
      "prefer-const": "error",
      "no-var": "error",
    },
  },
  {
    files: ["js/decoder/decoder-worker.js"],
    languageOptions: { globals: { ...globals.worker } },
  },
];
