// Evaluates a .railway/railway.ts with Railway's own SDK, offline, and prints what it declares
// as JSON: the project definition's resources and validateGraph's findings.
// usage: npx tsx evaluate.ts PATH/railway.ts [environment]
import { pathToFileURL } from "node:url";
import { createRailwayContext, project, validateGraph } from "railway/iac";

const [file, environment = "production"] = process.argv.slice(2);
const mod = await import(pathToFileURL(file).href);
const ctx = createRailwayContext({ command: "plan", environment, environmentName: environment });
const definition = await mod.default(ctx, project);
const resources = (definition.resources ?? []).flat();
const graph = { version: 1, project: { name: definition.name }, environments: [{ name: environment }],
  resources, edges: [] };
process.stdout.write(JSON.stringify({ name: definition.name, resources, problems: validateGraph(graph) }, null, 2));
