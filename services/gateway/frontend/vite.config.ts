// Builds the dashboard into the gateway package (halo_gateway/static), which is committed: a machine
// without Node still serves it. No CDN: every dependency is bundled.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "../src/halo_gateway/static",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  server: { proxy: { "/api": "http://127.0.0.1:8420", "/v1": "http://127.0.0.1:8420" } },
});
