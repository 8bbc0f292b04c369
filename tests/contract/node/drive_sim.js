// Drives the Pipedrive simulator with the official `pipedrive` npm client (v2 PersonsApi, DealsApi).
// Usage: node drive_sim.js <simulator base url> <api token>
// Prints one JSON object with what the client saw; exits 1 with the error on stderr on failure.
"use strict";

const { v2 } = require("pipedrive");

async function allPages(fetchPage) {
  const ids = [];
  let cursor;
  let pages = 0;
  do {
    const res = await fetchPage(cursor);
    if (res.success !== true) throw new Error(`success=${res.success}`);
    pages += 1;
    for (const item of res.data) ids.push(item.id);
    cursor = res.additional_data && res.additional_data.next_cursor;
  } while (cursor);
  return { pages, ids };
}

// The SDK's error interceptor rejects with the response body itself (no status, no headers).
async function failureOf(promise) {
  try {
    await promise;
    return null;
  } catch (err) {
    if (err && err.success === false) return err;
    throw err;
  }
}

async function main() {
  const [baseUrl, token] = process.argv.slice(2);
  const config = new v2.Configuration({ apiKey: token, basePath: `${baseUrl}/api/v2` });
  const persons = new v2.PersonsApi(config);
  const deals = new v2.DealsApi(config);
  const out = {};

  out.persons = await allPages((cursor) =>
    persons.getPersons({ limit: 7, cursor, include_fields: "marketing_status", sort_by: "id" })
  );
  out.personsByUpdate = await allPages((cursor) =>
    persons.getPersons({ limit: 9, cursor, sort_by: "update_time", updated_since: "2020-01-01T00:00:00Z" })
  );

  const created = await persons.addPerson({
    AddPersonRequest: {
      name: "Node Person",
      owner_id: 2,
      emails: [{ value: "node.person@example.com", primary: true, label: "work" }],
      phones: [{ value: "+49 30 5550100", primary: true, label: "work" }],
      marketing_status: "subscribed",
    },
  });
  out.created = created.data;
  const updated = await persons.updatePerson({
    id: created.data.id,
    UpdatePersonRequest: { name: "Node Person Renamed", marketing_status: "unsubscribed" },
  });
  out.updated = updated.data;
  const fetched = await persons.getPerson({ id: created.data.id, include_fields: "marketing_status" });
  out.fetched = fetched.data;
  const found = await persons.searchPersons({ term: "NODE.person@example.com", fields: "email", exact_match: true });
  out.search = found.data.items.map((i) => ({ id: i.item.id, emails: i.item.emails }));

  out.deals = await allPages((cursor) => deals.getDeals({ limit: 4, cursor }));
  const deal = await deals.addDeal({
    AddDealRequest: { title: "Node deal", value: 1234.5, currency: "EUR", person_id: created.data.id },
  });
  out.dealCreated = deal.data;
  const won = await deals.updateDeal({ id: deal.data.id, UpdateDealRequest: { status: "won" } });
  out.dealUpdated = won.data;
  out.dealDeleted = (await deals.deleteDeal({ id: deal.data.id })).data;
  out.deletedDeals = await allPages((cursor) => deals.getDeals({ status: "deleted", cursor }));

  out.personDeleted = (await persons.deletePerson({ id: created.data.id })).data;
  out.missingPerson = await failureOf(persons.getPerson({ id: 987654 }));
  out.badLimit = await failureOf(persons.getPersons({ limit: 501 }));

  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  const detail =
    err && err.success === false ? err : { message: String(err && err.message), stack: String(err && err.stack) };
  process.stderr.write(JSON.stringify({ error: detail }) + "\n");
  process.exit(1);
});
