// The peer: the Go controller-runtime operator a platform team would write instead of
// runbook-operator, doing the same work per Incident as the bench's policy asks of it.
//
//	peer --health-address 127.0.0.1:PORT --demo-url http://127.0.0.1:PORT
//
// For each new Incident (phase unset) one reconcile walks it through the bench policy's
// three HTTP steps against the DemoService (GET /health, POST /admin/restart expecting
// 202, GET /health), with 4 status merge-patches (Diagnosing, Remediating, Verifying,
// Resolved: one when it starts, one per finished step, as runbook-operator writes them)
// and 7 Events, as runbook-operator posts for that policy. Events are created directly
// (no EventRecorder: it aggregates and rate-limits) after the status write they follow,
// 4 at a time across the process and in order per incident, the way runbook-operator's
// Event lane does. Incidents are read as unstructured objects from the informer cache
// (client.CacheOptions.Unstructured); 16 concurrent reconciles, as runbook-operator's
// 16-thread Kube pool; the client's QPS is raised so its limiter is not the bottleneck.
// /healthz answers 200 once the cache has synced.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

const (
	component     = "runbook-operator-peer"
	reconcilers   = 16
	eventsAtATime = 4
)

var incidentGVK = schema.GroupVersionKind{Group: "remediation.ishchat.io", Version: "v1alpha1", Kind: "Incident"}

// step is one of the bench policy's HTTP steps, as the RemediationPolicy in bench/run.py has them.
type step struct {
	name, method, path, body string
	expect                   int
	phaseAfter               string // the status write once it has passed
	finding                  bool   // a diagnose step: a failure is a finding, not a stop (as in a policy)
}

var steps = []step{
	{"health", http.MethodGet, "/health", "", http.StatusOK, "Remediating", true},
	{"restart", http.MethodPost, "/admin/restart", `{"service":"bench"}`, http.StatusAccepted, "Verifying", false},
	{"healthy-again", http.MethodGet, "/health", "", http.StatusOK, "Resolved", false},
}

// events posts an incident's Events in order, at most eventsAtATime across all incidents.
type events struct {
	core  kubernetes.Interface
	slots chan struct{}
	wg    sync.WaitGroup
}

// lane starts ref's incident's queue: post queues one Event, done says the incident has no more.
func (e *events) lane(ref corev1.ObjectReference) (post func(reason, message string), done func()) {
	queue := make(chan *corev1.Event, 8)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for event := range queue {
			e.slots <- struct{}{}
			_, err := e.core.CoreV1().Events(ref.Namespace).Create(context.Background(), event, metav1.CreateOptions{})
			<-e.slots
			if err != nil {
				fmt.Fprintf(os.Stderr, "event %s for %s/%s: %v\n", event.Reason, ref.Namespace, ref.Name, err)
			}
		}
	}()
	post = func(reason, message string) {
		now := metav1.Now()
		queue <- &corev1.Event{
			ObjectMeta:          metav1.ObjectMeta{GenerateName: ref.Name + ".", Namespace: ref.Namespace},
			InvolvedObject:      ref,
			Type:                corev1.EventTypeNormal,
			Reason:              reason,
			Message:             message,
			FirstTimestamp:      now,
			LastTimestamp:       now,
			Count:               1,
			Source:              corev1.EventSource{Component: component},
			ReportingController: component,
			ReportingInstance:   component,
		}
	}
	return post, func() { close(queue) }
}

type reconciler struct {
	client.Client
	events *events
	http   *http.Client
	demo   string
}

func (r *reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	incident := &unstructured.Unstructured{}
	incident.SetGroupVersionKind(incidentGVK)
	if err := r.Get(ctx, req.NamespacedName, incident); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if phase, _, _ := unstructured.NestedString(incident.Object, "status", "phase"); phase != "" {
		return ctrl.Result{}, nil // under way or finished: this reconcile is the echo of our own writes
	}
	ref := corev1.ObjectReference{
		APIVersion: incidentGVK.GroupVersion().String(), Kind: incidentGVK.Kind,
		Namespace: incident.GetNamespace(), Name: incident.GetName(),
		UID: incident.GetUID(), ResourceVersion: incident.GetResourceVersion(),
	}
	post, done := r.events.lane(ref)
	defer done()
	if err := r.status(ctx, incident, "Diagnosing"); err != nil {
		return ctrl.Result{}, err
	}
	post("PolicySelected", "policy bench matched alert BenchDown")
	post("Diagnosing", "running 1 diagnose step")
	for _, s := range steps {
		err := r.call(ctx, s)
		if err != nil && !s.finding {
			return ctrl.Result{}, fmt.Errorf("step %s: %w", s.name, err)
		}
		if err := r.status(ctx, incident, s.phaseAfter); err != nil {
			return ctrl.Result{}, err
		}
		if err != nil {
			post("StepFailed", fmt.Sprintf("step %s failed: %v", s.name, err))
		} else {
			post("StepSucceeded", fmt.Sprintf("step %s succeeded", s.name))
		}
		if s.phaseAfter == "Resolved" {
			post("Resolved", "verified after 1 attempt")
		} else if s.phaseAfter == "Verifying" {
			post("Verifying", "running 1 verify step")
		}
	}
	return ctrl.Result{}, nil
}

// status merge-patches .status.phase (and resolvedAt once Resolved) on the status subresource.
func (r *reconciler) status(ctx context.Context, incident *unstructured.Unstructured, phase string) error {
	patch := fmt.Sprintf(`{"status":{"phase":%q}}`, phase)
	if phase == "Resolved" {
		patch = fmt.Sprintf(`{"status":{"phase":%q,"resolvedAt":%q}}`, phase, time.Now().UTC().Format(time.RFC3339))
	}
	return r.Status().Patch(ctx, incident, client.RawPatch(types.MergePatchType, []byte(patch)))
}

func (r *reconciler) call(ctx context.Context, s step) error {
	var body io.Reader
	if s.body != "" {
		body = strings.NewReader(s.body)
	}
	req, err := http.NewRequestWithContext(ctx, s.method, r.demo+s.path, body)
	if err != nil {
		return err
	}
	if s.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != s.expect {
		return fmt.Errorf("%s %s answered %d, expected %d", s.method, s.path, resp.StatusCode, s.expect)
	}
	return nil
}

func main() {
	health := flag.String("health-address", "127.0.0.1:8081", "serve /healthz on HOST:PORT")
	demo := flag.String("demo-url", "", "the DemoService's base URL (required)")
	flag.Parse()
	if *demo == "" {
		fmt.Fprintln(os.Stderr, "--demo-url: required (the DemoService the bench serves)")
		os.Exit(2)
	}
	config := ctrl.GetConfigOrDie()
	config.QPS, config.Burst = 5000, 10000
	mgr, err := ctrl.NewManager(config, ctrl.Options{
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: *health,
		Client:                 client.Options{Cache: &client.CacheOptions{Unstructured: true}},
	})
	if err != nil {
		fail(err)
	}
	var synced atomic.Bool
	if err := mgr.AddHealthzCheck("cache", func(*http.Request) error {
		if !synced.Load() {
			return errors.New("cache not synced")
		}
		return nil
	}); err != nil {
		fail(err)
	}
	if err := mgr.Add(ctrlRunnable(func(ctx context.Context) error {
		if mgr.GetCache().WaitForCacheSync(ctx) {
			synced.Store(true)
		}
		<-ctx.Done()
		return nil
	})); err != nil {
		fail(err)
	}
	events := &events{core: kubernetes.NewForConfigOrDie(config), slots: make(chan struct{}, eventsAtATime)}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = reconcilers
	r := &reconciler{Client: mgr.GetClient(), events: events, http: &http.Client{Transport: transport, Timeout: 30 * time.Second}, demo: strings.TrimRight(*demo, "/")}
	watched := &unstructured.Unstructured{}
	watched.SetGroupVersionKind(incidentGVK)
	if err := ctrl.NewControllerManagedBy(mgr).For(watched).
		WithOptions(controller.Options{MaxConcurrentReconciles: reconcilers}).Complete(r); err != nil {
		fail(err)
	}
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		fail(err)
	}
	events.wg.Wait() // a stop flushes the Events still queued
}

type ctrlRunnable func(context.Context) error

func (f ctrlRunnable) Start(ctx context.Context) error { return f(ctx) }

func fail(err error) {
	fmt.Fprintln(os.Stderr, "peer:", err)
	os.Exit(1)
}
