using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using System.Net;
using System.Text;
using System.Text.Json;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class JobValidationTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync();
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    public static TheoryData<string, string, string[]> InvalidBodies => new()
    {
        { "charge-payment", "{\"paymentId\":", ["$"] },
        { "charge-payment", "[1, 2]", ["$"] },
        { "charge-payment", "", ["$"] },
        { "charge-payment", "{}", ["paymentId", "accountId", "amountMinor", "currency"] },
        {
            "charge-payment",
            """{"paymentId":42,"accountId":7,"amountMinor":"12","currency":true}""",
            ["paymentId", "accountId", "amountMinor", "currency"]
        },
        {
            "charge-payment",
            """{"paymentId":"00000000-0000-0000-0000-000000000000","accountId":"acct 1","amountMinor":0,"currency":"eur"}""",
            ["paymentId", "accountId", "amountMinor", "currency"]
        },
        {
            "charge-payment",
            """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"acct-1","amountMinor":12.5,"currency":"ABC"}""",
            ["amountMinor", "currency"]
        },
        {
            "charge-payment",
            """{"paymentId":"not-a-uuid","accountId":"acct-1","amountMinor":1000000000000001,"currency":"EUR","extra":1}""",
            ["paymentId", "amountMinor", "extra"]
        },
        {
            "deliver-webhook",
            """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"ftp://files.example.com/x","eventType":"","payload":null}""",
            ["url", "eventType", "payload"]
        },
        {
            "deliver-webhook",
            """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"not a url","eventType":"order.paid"}""",
            ["url", "payload"]
        },
        {
            // Sent as an HTTP header, which HttpClient refuses to send with anything but ASCII in it.
            "deliver-webhook",
            """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"https://hooks.example.com/x","eventType":"commande.créée","payload":{}}""",
            ["eventType"]
        },
        {
            "deliver-webhook",
            """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"https://hooks.example.com/x","eventType":"order.paid\r\nX-Forged: 1","payload":{}}""",
            ["eventType"]
        },
        {
            // Credentials in the URL: the worker would not send them, and the job's row and status would show them.
            "deliver-webhook",
            """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"https://hook:s3cret@hooks.example.com/x","eventType":"order.paid","payload":{}}""",
            ["url"]
        },
        {
            // Port 0: no connection can be made, and each failed connect would be retried as a network failure.
            "deliver-webhook",
            """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"https://hooks.example.com:0/x","eventType":"order.paid","payload":{}}""",
            ["url"]
        },
        {
            // A label of 64 characters: DNS cannot resolve it, and each failed lookup would be retried as a network failure.
            "deliver-webhook",
            """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"https://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.com/x","eventType":"order.paid","payload":{}}""",
            ["url"]
        },
        {
            "generate-report",
            """{"reportId":"00000000-0000-0000-0000-000000000000","accountId":"","currency":"usd","pageSize":10001}""",
            ["reportId", "accountId", "currency", "pageSize"]
        },
        {
            "generate-report",
            """{"reportId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","pageSize":"ten"}""",
            ["pageSize"]
        },
        {
            // A misspelt optional field would otherwise be dropped and the report run with the default page size.
            "generate-report",
            """{"reportId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","page_size":10}""",
            ["page_size"]
        },
        {
            // Control characters: the worker sends the event type as a header and stores both as text, where PostgreSQL refuses a NUL.
            "deliver-webhook",
            """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"https://hooks.example.com/x\u0000","eventType":"order.paid\u0000","payload":{}}""",
            ["url", "eventType"]
        },
        {
            // One field twice in different casings: which one counts would be a guess.
            "charge-payment",
            """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"acct-1","AccountId":"acct-2","amountMinor":5,"currency":"EUR"}""",
            ["AccountId"]
        },
    };

    [Theory]
    [MemberData(nameof(InvalidBodies))]
    public async Task Invalid_body_is_a_400_naming_each_bad_field(string kind, string json, string[] badFields)
    {
        using var response = await _api.Client.PostJobAsync(kind, json);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(badFields.ToHashSet(), await response.ReadErrorFieldsAsync());
        await AssertNoJobsAsync();
    }

    /// <summary>
    /// A name given twice is named, as a batch names it inside a job: the body was refused as "not valid JSON" under
    /// <c>$</c>, with no line or byte, though its JSON was well formed and one field was at fault. A body broken
    /// elsewhere as well is still refused where the parser stops.
    /// </summary>
    public static TheoryData<string, string, string, string> RepeatedNameBodies => new()
    {
        { "charge-payment", """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"a","amountMinor":5,"currency":"EUR","paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a12"}""", "paymentId", "Is given more than once" },
        { "deliver-webhook", """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"https://hooks.example.com/x","eventType":"order.paid","payload":{"items":[{"sku":1,"sku":2}]}}""", "payload", "Holds an object with a field given more than once" },
        { "charge-payment", """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"a",""", "$", "not valid JSON" },
        // Names are compared as the parser compares them, after their escapes are read: "\u0070aymentId" is paymentId.
        { "charge-payment", """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"a","amountMinor":5,"currency":"EUR","\u0070aymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a12"}""", "paymentId", "Is given more than once" },
        // Deep in arrays of arrays of objects.
        { "deliver-webhook", """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"https://hooks.example.com/x","eventType":"order.paid","payload":{"a":[[{"b":1}],[{"c":{"d":1,"d":2}}]]}}""", "payload", "Holds an object with a field given more than once" },
        // A name is repeated only within one object, not in a sibling, a parent or a child; and only the first repeat is named.
        // Not an object: the body as a whole holds the repeat.
        { "charge-payment", """[{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a12"}]""", "$", "Holds an object with a field given more than once" },
        { "deliver-webhook", """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","payload":{"url":{"url":1},"b":[{"url":1},{"url":1}]},"url":"https://hooks.example.com/x","eventType":"a","eventType":"b","payload":{}}""", "eventType", "Is given more than once" },
    };

    [Theory]
    [MemberData(nameof(RepeatedNameBodies))]
    public async Task A_field_given_twice_is_a_400_naming_it(string kind, string json, string badField, string why)
    {
        using var response = await _api.Client.PostJobAsync(kind, json);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal([badField], await response.ReadErrorFieldsAsync());
        Assert.Contains(why, await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        await AssertNoJobsAsync();
    }

    /// <summary>JSON whose bytes are not UTF-8 in a field's value, in a field's name, in a webhook's payload.</summary>
    public static TheoryData<string, string, string> NotUtf8Bodies => new()
    {
        { "charge-payment", """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"#","amountMinor":5,"currency":"EUR"}""", "FFFE" },
        { "charge-payment", """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"a","amountMinor":5,"currency":"EUR","#":1}""", "C328" },
        { "deliver-webhook", """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"https://hooks.example.com/x","eventType":"order.paid","payload":{"note":"#"}}""", "EDA080" },
    };

    [Theory]
    [MemberData(nameof(NotUtf8Bodies))]
    public async Task A_body_that_is_not_utf8_is_a_400_naming_the_body(string kind, string json, string badBytes)
    {
        // '#' marks where the bytes (in hex) go: a lone byte, a broken two-byte sequence, an encoded surrogate.
        var at = json.IndexOf('#', StringComparison.Ordinal);
        byte[] body = [.. Encoding.UTF8.GetBytes(json[..at]), .. Convert.FromHexString(badBytes), .. Encoding.UTF8.GetBytes(json[(at + 1)..])];
        using var content = new ByteArrayContent(body);
        content.Headers.ContentType = new("application/json");

        using var response = await _api.Client.PostJobAsync(kind, content);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(["$"], await response.ReadErrorFieldsAsync());
        await AssertNoJobsAsync();
    }

    /// <summary>
    /// A body that begins with a UTF-8 byte order mark (what Windows PowerShell 5 and some editors write before JSON) was
    /// refused, 400 "The body is not valid JSON", for three bytes the client cannot see. RFC 8259 lets a parser ignore it,
    /// and ASP.NET Core's JSON binding does: the job is accepted, one and a batch alike, its command published as it would
    /// be without the mark (the worker runs it: a published body with the mark would be dead-lettered), and the same
    /// request sent again without the mark is its repeat, not another job.
    /// </summary>
    [Fact]
    public async Task A_body_beginning_with_a_utf8_byte_order_mark_is_read_as_without_it()
    {
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        var paymentId = Guid.NewGuid();
        var json = JobRequests.ChargePayment(paymentId);
        using var content = new ByteArrayContent([0xEF, 0xBB, 0xBF, .. Encoding.UTF8.GetBytes(json)]);
        content.Headers.ContentType = new("application/json");

        using var response = await _api.Client.PostJobAsync("charge-payment", content);

        Assert.True(response.StatusCode == HttpStatusCode.Accepted, $"{(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        var jobId = (await response.ReadJsonAsync()).GetProperty("jobId").GetGuid();
        await fixture.WaitForJobAsync(paymentId, JobStatus.Succeeded);
        using var again = await _api.Client.PostJobAsync("charge-payment", json);
        Assert.Equal(HttpStatusCode.Accepted, again.StatusCode);
        Assert.Equal(jobId, (await again.ReadJsonAsync()).GetProperty("jobId").GetGuid());

        var batchPayment = Guid.NewGuid();
        using var batch = new ByteArrayContent([0xEF, 0xBB, 0xBF, .. Encoding.UTF8.GetBytes($$"""{"jobs":[{{JobRequests.ChargePayment(batchPayment)}}]}""")]);
        batch.Headers.ContentType = new("application/json");
        using var batchResponse = await _api.Client.PostAsync(new Uri("/api/jobs/charge-payment/batch", UriKind.Relative), batch);
        Assert.True(batchResponse.StatusCode == HttpStatusCode.Accepted, $"{(int)batchResponse.StatusCode}: {await batchResponse.Content.ReadAsStringAsync()}");
        await fixture.WaitForJobAsync(batchPayment, JobStatus.Succeeded);

        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == paymentId));
        Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == batchPayment));
    }

    /// <summary>
    /// Valid UTF-8 and valid JSON whose <c>\u</c> escapes are not valid UTF-16 (a high surrogate alone,
    /// a low one alone, two highs): in a field's value, deep in a webhook's payload, in a field's name.
    /// </summary>
    public static TheoryData<string, string, string> BrokenEscapeBodies => new()
    {
        { "charge-payment", """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"a\ud800b","amountMinor":5,"currency":"EUR"}""", "accountId" },
        { "generate-report", """{"reportId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","accountId":"\udc00","currency":"USD"}""", "accountId" },
        { "deliver-webhook", """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"https://hooks.example.com/x","eventType":"order.paid","payload":{"items":[{"note":"\ud83d\ud83d"}]}}""", "payload" },
        { "charge-payment", """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"a","amountMinor":5,"currency":"EUR","x\ud800":1}""", "$" },
        // With a field given twice before it: the escape is named, whatever comes first.
        { "charge-payment", """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"a\ud800","amountMinor":5,"currency":"EUR"}""", "accountId" },
        // Or after it.
        { "charge-payment", """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"a\ud800","amountMinor":5,"currency":"EUR","accountId":"b"}""", "accountId" },
        // In a name deep in a webhook's payload: the field holding it.
        { "deliver-webhook", """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b70","url":"https://hooks.example.com/x","eventType":"order.paid","payload":{"items":[{"\ud800":1}]}}""", "payload" },
        // Not an object, or no more than a string: the body as a whole.
        { "charge-payment", """[{"accountId":"a\ud800"}]""", "$" },
        { "charge-payment", """ "\udc00" """, "$" },
        // Before the body stops being JSON: the escape is named.
        { "charge-payment", """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11","accountId":"a\ud800",""", "accountId" },
    };

    [Theory]
    [MemberData(nameof(BrokenEscapeBodies))]
    public async Task A_string_escaping_an_unpaired_surrogate_is_a_400_naming_its_field(string kind, string json, string badField)
    {
        using var response = await _api.Client.PostJobAsync(kind, json);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal([badField], await response.ReadErrorFieldsAsync());
        Assert.Contains("escape in it is an unpaired surrogate", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        await AssertNoJobsAsync();
    }

    /// <summary>A broken escape after the point where the body stops being JSON is not reached: the parser says where it stopped.</summary>
    [Fact]
    public async Task A_broken_escape_past_where_the_body_stops_being_json_is_not_named()
    {
        using var response = await _api.Client.PostJobAsync(
            "charge-payment", """{"paymentId":"0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11" "accountId":"a\ud800","amountMinor":5,"currency":"EUR"}""");

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(["$"], await response.ReadErrorFieldsAsync());
        Assert.Contains("not valid JSON", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        await AssertNoJobsAsync();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_nul_inside_a_payload_is_data_and_accepted(bool scheduled)
    {
        // The request body and a scheduled job's command are stored as bytes (bytea), not text or jsonb, which refuse it.
        var runAt = scheduled ? $",\"runAt\":\"{DateTimeOffset.UtcNow.AddHours(1):O}\"" : "";
        using var response = await _api.Client.PostJobAsync(
            "deliver-webhook",
            $$"""{"webhookId":"{{Guid.NewGuid()}}","url":"https://hooks.example.com/x","eventType":"order.paid","payload":{"note":"a\u0000b"}{{runAt}}}""");

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task Escaped_surrogate_pairs_are_text_like_any_other()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture, ChargePaymentProbe.DeliverWebhookExchange);

        // An emoji written as a pair of escapes: valid, and it reaches the payload as the character.
        using var response = await _api.Client.PostJobAsync(
            "deliver-webhook",
            """{"webhookId":"9a1f7c3e-55b0-4f0e-8b1a-2f6d3c9e4b71","url":"https://hooks.example.com/x","eventType":"order.paid","payload":{"note":"\ud83d\ude00 \u00e9"}}""");

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        const string Note = "\U0001F600 \u00e9";
        // Publisher confirms: the command is in the queue by the time the 202 arrives.
        var message = await published.Channel.BasicGetAsync(published.Queue, autoAck: true);
        Assert.NotNull(message);
        using (var envelope = JsonDocument.Parse(message.Body))
        {
            Assert.Equal(Note, envelope.RootElement.GetProperty("message").GetProperty("payload").GetProperty("note").GetString());
        }

        // The stored request (what a republish would send) reads the same.
        await using var db = fixture.CreateDbContext();
        var stored = await db.Jobs.AsNoTracking().Select(j => j.RequestBody).SingleAsync();
        using var request = JsonDocument.Parse(stored!);
        Assert.Equal(Note, request.RootElement.GetProperty("payload").GetProperty("note").GetString());
    }

    /// <summary>Hosts the worker would refuse to deliver to (loopback, private, link-local metadata, unique local, unspecified, localhost names), as written in URLs.</summary>
    public static TheoryData<string> InternalWebhookUrls => new()
    {
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "https://LOCALHOST./hook",
        "https://localhost。/hook", // an ideographic full stop, which IDN reads as a dot
        "http://api.localhost/hook",
        "http://[::1]/hook",
        "http://[::ffff:10.1.2.3]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://192.168.1.20/hook",
        "http://[fd00::1]/hook",
        "http://0.0.0.0/hook",
        "http://2130706433/hook", // 127.0.0.1 as one decimal number
        "http://10.0.0.5./hook", // an address with a final dot, as "localhost." is a name with one
    };

    [Theory]
    [MemberData(nameof(InternalWebhookUrls))]
    public async Task A_webhook_url_on_an_internal_address_is_a_400_naming_url(string url)
    {
        using var response = await _api.Client.PostJobAsync("deliver-webhook", WebhookBody(url));

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(new HashSet<string> { "url" }, await response.ReadErrorFieldsAsync());
        await AssertNoJobsAsync();
    }

    [Fact]
    public async Task A_webhook_url_on_a_public_host_is_accepted_and_internal_ones_are_when_private_networks_are_allowed()
    {
        using (var response = await _api.Client.PostJobAsync("deliver-webhook", WebhookBody("https://hooks.example.com/orders")))
        {
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        }

        await using var allowing = await fixture.StartApiAsync(new Dictionary<string, string?> { ["Webhooks:AllowPrivateNetworks"] = "true" });
        using (var response = await allowing.Client.PostJobAsync("deliver-webhook", WebhookBody("http://127.0.0.1:8080/hook")))
        {
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        }

        await using var db = fixture.CreateDbContext();
        Assert.Equal(2, await db.Jobs.CountAsync());
    }

    private static string WebhookBody(string url) =>
        $$$"""{"webhookId":"{{{Guid.NewGuid()}}}","url":"{{{url}}}","eventType":"order.paid","payload":{"orderId":7}}""";

    [Theory]
    [InlineData(201, "")]
    // '#' is reserved: "order-7#0" would be the key of job 0 of a batch sent with "order-7".
    [InlineData(0, "order-7#0")]
    public async Task Malformed_idempotency_key_is_a_400_naming_the_header(int length, string key)
    {
        using var response = await _api.Client.PostJobAsync(
            "charge-payment", JobRequests.ChargePayment(Guid.NewGuid()), idempotencyKey: length > 0 ? new string('k', length) : key);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(["Idempotency-Key"], await response.ReadErrorFieldsAsync());
        await AssertNoJobsAsync();
    }

    [Fact]
    public async Task Unknown_kind_is_a_404_problem()
    {
        using var response = await _api.Client.PostJobAsync("launch-rocket", "{}");

        await response.AssertProblemAsync(StatusCodes.Status404NotFound);
    }

    [Fact]
    public async Task Body_over_256_KiB_is_a_413_problem()
    {
        var padding = new string('x', 300 * 1024);
        var json = $$"""{"paymentId":"{{Guid.NewGuid()}}","accountId":"acct-1","amountMinor":1,"currency":"EUR","pad":"{{padding}}"}""";

        using var response = await _api.Client.PostJobAsync("charge-payment", json);

        await response.AssertProblemAsync(StatusCodes.Status413PayloadTooLarge);
        await AssertNoJobsAsync();
    }

    [Fact]
    public async Task Chunked_body_over_256_KiB_is_a_413_problem()
    {
        var padding = new string('x', 300 * 1024);
        var json = $$"""{"paymentId":"{{Guid.NewGuid()}}","accountId":"acct-1","amountMinor":1,"currency":"EUR","pad":"{{padding}}"}""";
        // A stream of unknown length makes HttpClient send Transfer-Encoding: chunked, no Content-Length.
        using var content = new StreamContent(new UnknownLengthStream(Encoding.UTF8.GetBytes(json)));
        content.Headers.ContentType = new("application/json");

        using var response = await _api.Client.PostJobAsync("charge-payment", content);

        await response.AssertProblemAsync(StatusCodes.Status413PayloadTooLarge);
        await AssertNoJobsAsync();
    }

    [Theory]
    [InlineData("text/plain")]
    [InlineData("application/x-www-form-urlencoded")]
    [InlineData(null)]
    public async Task Body_that_is_not_json_content_is_a_415_problem(string? mediaType)
    {
        using var content = new ByteArrayContent(Encoding.UTF8.GetBytes(JobRequests.ChargePayment(Guid.NewGuid())));
        if (mediaType is not null)
        {
            content.Headers.ContentType = new(mediaType);
        }

        using var response = await _api.Client.PostJobAsync("charge-payment", content);

        // Answered by the endpoint, which says what came and what it takes; before, routing refused it with no detail.
        await response.AssertProblemAsync(StatusCodes.Status415UnsupportedMediaType);
        var detail = (await response.ReadJsonAsync()).GetProperty("detail").GetString();
        Assert.Contains("Content-Type: application/json", detail, StringComparison.Ordinal);
        Assert.Contains(mediaType ?? "no Content-Type", detail, StringComparison.Ordinal);
        await AssertNoJobsAsync();
    }

    [Theory]
    [InlineData("/api/jobs/mine-bitcoin")]
    [InlineData("/api/jobs/mine-bitcoin/batch")]
    public async Task An_unknown_kind_sent_as_another_media_type_is_a_404_problem(string path)
    {
        using var content = new StringContent("mine", Encoding.UTF8, "text/plain");

        using var response = await _api.Client.PostAsync(new Uri(path, UriKind.Relative), content);

        await response.AssertProblemAsync(StatusCodes.Status404NotFound);
        Assert.Contains("'mine-bitcoin' is not a job kind", (await response.ReadJsonAsync()).GetProperty("detail").GetString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("application/json; charset=latin1", null, StatusCodes.Status415UnsupportedMediaType)]
    [InlineData("application/json; charset=utf-16", null, StatusCodes.Status415UnsupportedMediaType)]
    [InlineData("application/json", "gzip", StatusCodes.Status415UnsupportedMediaType)]
    [InlineData("application/json", "identity, br", StatusCodes.Status415UnsupportedMediaType)]
    [InlineData("application/json; charset=utf-8", null, StatusCodes.Status202Accepted)]
    [InlineData("application/json; charset=\"UTF-8\"", "identity", StatusCodes.Status202Accepted)]
    public async Task Json_is_read_only_as_uncompressed_utf8_and_anything_else_is_a_415_problem(string contentType, string? contentEncoding, int status)
    {
        // The body is plain UTF-8 JSON that would parse: what it claims to be is what gets it refused.
        using var content = new ByteArrayContent(Encoding.UTF8.GetBytes(JobRequests.ChargePayment(Guid.NewGuid())));
        content.Headers.TryAddWithoutValidation("Content-Type", contentType);
        if (contentEncoding is not null)
        {
            content.Headers.TryAddWithoutValidation("Content-Encoding", contentEncoding);
        }

        using var response = await _api.Client.PostJobAsync("charge-payment", content);

        Assert.Equal(status, (int)response.StatusCode);
        if (status == StatusCodes.Status415UnsupportedMediaType)
        {
            await response.AssertProblemAsync(status);
            await AssertNoJobsAsync();
        }
    }

    private async Task AssertNoJobsAsync()
    {
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
    }

    /// <summary>Wraps bytes in a stream that does not tell its length.</summary>
    private sealed class UnknownLengthStream(byte[] bytes) : MemoryStream(bytes)
    {
        public override bool CanSeek => false;
    }
}
